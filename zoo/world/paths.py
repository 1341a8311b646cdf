"""Where the committed world assets live (loaded with ``from_pretrained`` / ``datasets`` like any other)."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
MODEL = ASSETS / "model"  # tokenizer + pretrained base model (safetensors)
JUDGE = ASSETS / "judge"  # the world's AI labeler (LMJudge model) + judge_info.json (principle, agreement)
DATA = ASSETS / "data"
DEMONSTRATIONS = DATA / "sft.jsonl"  # prompt, completion
PREFERENCE_PROMPTS = DATA / "preference_prompts.jsonl"  # prompt
EVAL_PROMPTS = DATA / "eval_prompts.jsonl"  # prompt (held out from everything above)
