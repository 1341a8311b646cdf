"""``zoo export RUN_DIR --out DIR [--merge] [--cache DIR]``: a run's trained policy as a model directory that
plain ``from_pretrained`` loads.

- A full fine-tuning run: its weights, as saved.
- A LoRA run: with ``--merge``, the adapter merged into its base (the run's ``policy_init``: the SFT stage or
  the model it started from) as full weights; without, the adapter itself (``adapter_config.json`` naming
  its base), which peft's ``AutoPeftModelForCausalLM.from_pretrained`` loads.

Either way the directory gets the tokenizer (with its chat template), a ``generation_config.json`` (the
run's EOS and PAD, sampling at the evaluation's temperature and length) and the model card
(``zoo.card``). Safetensors only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from omegaconf import OmegaConf

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def resolve_portable(value: str, cache_dir: str) -> str:
    """A path as run outputs record it (``${stages.cache_dir}/...``, ``${world_asset:...}``) on this machine."""
    from zoo.config import register_configs

    register_configs()  # the ${world_asset:...} resolvers
    return str(OmegaConf.create({"stages": {"cache_dir": cache_dir}, "value": value}).value)


def export(run_dir: Path, out: Path, merge: bool = False, cache_dir: str | None = None) -> Path:
    """Write the model of ``run_dir`` to ``out``; returns ``out``."""
    from transformers import AutoTokenizer, GenerationConfig

    from zoo.card import model_card
    from zoo.files import write_atomically
    from zoo.models import load_causal_lm

    from zoo.config import register_configs

    register_configs()  # config.yaml's portable paths (${world_asset:...}) resolve through zoo's resolvers
    model_dir = run_dir / "model"
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        metrics = {}
    if metrics.get("status") != "finished" or not model_dir.is_dir():
        raise ValueError(f"{run_dir}: no finished run with a model/ to export (metrics.json status: "
                         f"{metrics.get('status', 'missing')})")
    cfg = OmegaConf.load(run_dir / "config.yaml")
    cache_dir = cache_dir or str(cfg.stages.cache_dir)
    adapter = (model_dir / "adapter_config.json").exists()
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty: export into a new directory")
    out.mkdir(parents=True, exist_ok=True)

    if adapter and merge:
        from peft import PeftModel

        base = resolve_portable(str(metrics["policy_init"]), cache_dir)
        if not Path(base).exists() and "/" not in base:
            raise ValueError(f"the adapter's base {metrics['policy_init']} is not at {base}: pass --cache DIR (the "
                             f"stage cache the run used)")
        merged = PeftModel.from_pretrained(load_causal_lm(base, cfg.model.dtype), str(model_dir)).merge_and_unload()
        merged.save_pretrained(out, safe_serialization=True)
    elif adapter:
        for name in ADAPTER_FILES:
            shutil.copy2(model_dir / name, out / name)
    else:
        load_causal_lm(str(model_dir), cfg.model.dtype).save_pretrained(out, safe_serialization=True)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.save_pretrained(out)
    GenerationConfig(do_sample=True, temperature=float(cfg.eval.temperature), top_k=0, top_p=1.0,
                     max_new_tokens=int(cfg.eval.max_new_tokens), eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    OmegaConf.update(cfg, "stages.cache_dir", cache_dir)
    command = f"zoo export {run_dir} --out {out}" + (" --merge" if merge else "")
    card = model_card(cfg, metrics, adapter=adapter and not merge)
    write_atomically(out / "README.md", card + f"\nExported from the run directory with `{command}`.\n")
    return out


def main(argv: list[str]) -> None:
    from zoo.cli_help import Parser

    parser = Parser(prog="zoo export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory (with model/ and metrics.json)")
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the exported model")
    parser.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base (full weights)")
    parser.add_argument("--cache", default=None,
                        help="the stage cache the run used, where its base model lives (default: its config's)")
    args = parser.parse_args(argv)
    path = export(args.run_dir, args.out, args.merge, args.cache)
    print(f"[zoo] exported {args.run_dir} -> {path}")
