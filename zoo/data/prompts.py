"""The prompts a run samples from (``data.prompts_path``): a local file as it is, or a cached ``prompts``
stage read from a hub dataset.

From a hub dataset (or a local copy of one) the stage reads one split, converts its rows
(``data.row_format``), takes each row's prompt (an implicit prompt is split off a pair's chosen and
rejected) or, with ``data.prompt_field``, a text column cut to ``data.prompt_prefix_tokens`` of the
policy's tokenizer, keeps each distinct prompt once (HH-RLHF asks many prompts more than once; every
review's opening is kept, as the DPO paper samples one per review), shuffles them with a fixed seed
(hub splits are ordered: IMDb's by label, HH-RLHF's by subset, and the stages take the first N), and
writes ``prompts.jsonl``. The preference stage, PPO's rollouts and the evaluation then read that file,
as they read the world's. Its key is the dataset id (and revision), split, conversion and, when prompts
are cut by tokens, the tokenizer's files and settings.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import DictConfig

from zoo.data.formats import prefix_prompts
from zoo.data.load import is_local_file, load_rows, prompt_key, read_source
from zoo.data.schema import DataError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "tokenizer.model", "chat_template.jinja")


def tokenizer_identity(name_or_path: str) -> str:
    """What a tokenizer is, for a cache key: the digest of its files in a local model directory, else the
    hub id (the weights do not change how text is cut into tokens)."""
    from zoo.stages import file_digest

    path = Path(name_or_path)
    if not path.is_dir():
        return str(name_or_path)
    files = [path / name for name in TOKENIZER_FILES if (path / name).exists()]
    return ",".join(file_digest(f) for f in files)


def read_prompts(cfg: DictConfig, split: str) -> list:
    """The distinct prompts of ``split`` of ``data.prompts_path`` (see the module docstring)."""
    data = cfg.data
    rows, _ = read_source(data, data.prompts_path, split)
    source = f"{data.prompts_path} ({split})"
    if data.prompt_field:
        missing = next((i for i, r in enumerate(rows) if not isinstance(r.get(data.prompt_field), str)), None)
        if missing is not None:
            raise DataError(f"{source}: row {missing}: field '{data.prompt_field}' (data.prompt_field) is missing or "
                            f"not a string")
        prompts = [r[data.prompt_field] for r in rows]
        if data.prompt_prefix_tokens:
            from zoo.models import model_tokenizer

            low, high = data.prompt_prefix_tokens
            prompts = prefix_prompts(prompts, model_tokenizer(cfg.model), low, high, seed=f"prefix-{split}")
    else:  # a prompt asked in several rows (HH-RLHF's pairs) is one prompt
        checked, _ = load_rows("prompts", source, rows, data.skip_bad_rows)
        prompts = list({prompt_key(r["prompt"]): r["prompt"] for r in checked}.values())
    # hub splits come in an order (IMDb's by label, HH-RLHF's by subset): shuffled once, so the first N prompts
    # that the preference stage and the evaluation take are a random sample of the split
    random.Random(f"prompts-{split}").shuffle(prompts)
    return prompts


def prompts_file(cfg: DictConfig, split: str | None = None) -> Path:
    """``data.prompts_path`` itself when it is a local file read as it is, else the cached prompts stage of
    ``split`` (default ``data.split``)."""
    from zoo.stages import cache_key, cached_stage, identity

    data = cfg.data
    if not data.prompts_path:
        raise DataError(f"data={data.name} has no prompts (data.prompts_path)")
    split = split or data.split
    as_is = not (data.prompt_field or data.prompt_prefix_tokens or data.get("row_format"))
    if is_local_file(data.prompts_path):
        if split != data.split:
            raise DataError(f"data.eval_split={split} reads a split of a hub dataset, but data.prompts_path="
                            f"{data.prompts_path} is a file: set data.eval_path=FILE instead")
        if as_is:
            return Path(data.prompts_path)
    tokenizer = None
    if data.prompt_prefix_tokens:
        from zoo.models import tokenizer_settings

        tokenizer = [tokenizer_identity(cfg.model.name_or_path), tokenizer_settings(cfg.model)]
    prefix = list(data.prompt_prefix_tokens) if data.prompt_prefix_tokens else None
    key = cache_key("prompts", identity(data.prompts_path), data.get("revision"), split, data.subset,
                    data.get("row_format"), data.prompt_field, prefix, tokenizer, data.skip_bad_rows, "shuffled")

    def build(out: Path) -> dict:
        prompts = read_prompts(cfg, split)
        with open(out / "prompts.jsonl", "w") as f:
            f.writelines(json.dumps({"prompt": p}) + "\n" for p in prompts)
        print(f"[zoo] prompts stage: {len(prompts)} distinct prompts of {data.prompts_path} ({split})")
        return {"prompts": len(prompts), "source": str(data.prompts_path), "split": split}

    return cached_stage(cfg.stages.cache_dir, "prompts", key, build, "prompts.jsonl").path
