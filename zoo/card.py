"""Model cards: the ``README.md`` of every saved ``model/``, in the hub's model-card format.

A YAML header the hub reads (``base_model`` where the base is a hub model, ``library_name``: ``peft`` for an
adapter or ``transformers``, ``pipeline_tag``, ``tags``, ``datasets`` where the data is a hub dataset), then
what a reader needs to trust or reproduce the model: the algorithm and its loss's hyperparameters, the
data and the feedback it learned from, the training settings (LoRA and quantisation included), the run's
held-out metrics, the exact command, and zoo's version and commit.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from zoo.compare import git_commit

# metrics.json's held-out numbers a card shows, with what they mean
CARD_METRICS = {
    "gold_reward": "gold reward (the task's true reward) of the policy's samples",
    "kl_to_ref": "KL(policy || reference) per sequence, nats",
    "win_rate_vs_ref": "win rate against the reference's samples, by gold reward",
    "judge_win_rate_vs_ref": "win rate against the reference's samples, by the LM judge",
    "mean_length": "mean completion length, tokens",
    "rm_accuracy_vs_labels": "reward model's held-out accuracy against its labels",
    "rm_accuracy_vs_gold": "reward model's held-out accuracy against gold",
}


def looks_like_hub_id(name: str) -> bool:
    """ORG/NAME (optionally @REVISION) that is not a path on this machine."""
    repo = name.split("@", 1)[0]
    return repo.count("/") == 1 and not repo.startswith(("/", ".", "~", "$")) and not Path(repo).exists()


def zoo_version() -> dict:
    """zoo's package version and the commit of its checkout (None outside git)."""
    try:
        version = metadata.version("zoo")
    except metadata.PackageNotFoundError:
        version = None
    return {"version": version, "commit": git_commit()["commit"]}


def run_command() -> str:
    """The command line of this run: ``zoo train`` with the overrides Hydra received, or this process's argv."""
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = list(HydraConfig.get().overrides.task)
        return " ".join(["zoo train", *overrides])
    except (ImportError, ValueError):  # not inside a Hydra run (a test, a notebook)
        return " ".join(["python", *sys.argv])


def _value(value) -> str:
    if isinstance(value, dict) and "mean" in value:
        value = value["mean"]
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def model_card(cfg: DictConfig, metrics: dict, adapter: bool, command: str | None = None) -> str:
    """The card of a run's ``model/``: ``cfg`` the run's config, ``metrics`` its metrics.json, ``adapter`` whether
    ``model/`` holds a LoRA adapter rather than full weights."""
    from zoo.config import portable

    resolved = OmegaConf.to_container(cfg, resolve=True)
    model, data, algo, trainer = resolved["model"], resolved["data"], resolved["algo"], resolved["trainer"]
    cache = resolved["stages"]["cache_dir"]
    base = portable(str(model["name_or_path"]), cache)  # as run outputs record paths: no machine's absolute ones
    if data.get("path"):
        data["path"] = portable(str(data["path"]), cache)
    header = {"library_name": "peft" if adapter else "transformers", "pipeline_tag": "text-generation",
              "tags": ["zoo", str(algo["name"]), f"feedback-{resolved['feedback']['name']}"]}
    if looks_like_hub_id(base):
        header["base_model"] = base.split("@", 1)[0]
    if data.get("path") and looks_like_hub_id(str(data["path"])):
        header["datasets"] = [str(data["path"])]
    loss = {k: v for k, v in algo["loss"].items() if k != "_target_"}
    version = zoo_version()
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
        f"# {algo['name']} on {model['name']}", "",
        f"Trained with zoo {version['version'] or ''} (commit {version['commit'] or 'unknown'}): "
        f"`{algo['loss']['_target_']}` on data `{data['name']}` with feedback `{resolved['feedback']['name']}`, "
        f"seed {resolved['seed']}. This directory holds "
        + ("a LoRA adapter: load it on its base model with peft, or export a merged model with "
           "`zoo export RUN_DIR --merge`." if adapter else "the full weights: `from_pretrained` loads it."),
        "", "## Training", "", "| setting | value |", "|---|---|",
        f"| base model | `{base}` |",
        *([f"| trained from | `{metrics['policy_init']}` (the weights the {'adapter sits on' if adapter else 'training started from'}) |"]
          if metrics.get("policy_init") else []),
        f"| algorithm | {algo['name']} (`{algo['loss']['_target_']}`) |",
        *[f"| loss.{k} | {_value(v)} |" for k, v in loss.items()],
        f"| data | `{data['name']}`" + (f" (`{data['path']}`)" if data.get("path") else "") + " |",
        f"| feedback | `{resolved['feedback']['name']}` |",
        *[f"| trainer.{k} | {_value(trainer[k])} |" for k in ("max_steps", "batch_size", "grad_accum_steps",
                                                              "learning_rate", "warmup_steps", "max_grad_norm",
                                                              "mixed_precision") if k in trainer],
    ]
    peft = resolved.get("peft", {})
    if peft.get("enabled"):
        lines.append(f"| LoRA | r={peft['r']}, alpha={peft['alpha']}, dropout={peft['dropout']}, "
                     f"target_modules={peft['target_modules']} |")
    bits = resolved.get("quant", {}).get("bits")
    if bits:
        lines.append(f"| quantisation | {bits}-bit base (bitsandbytes) |")
    shown = [(k, meaning) for k, meaning in CARD_METRICS.items() if k in metrics]
    if shown:
        lines += ["", "## Results", "", f"On {metrics.get('num_eval_prompts', 'the')} held-out prompts "
                  "(`metrics.json` in the run directory has them all, with 95% intervals):", "",
                  "| metric | value |", "|---|---|",
                  *[f"| {meaning} | {_value(metrics[k])} |" for k, meaning in shown]]
    lines += ["", "## Reproduce", "", "```bash", command or run_command(), "```", "",
              "The run directory's `config.yaml` holds the resolved config.", ""]
    return "\n".join(lines)
