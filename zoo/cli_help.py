"""The CLI's help and its suggestions: an argparse parser that answers a mistyped option with the nearest valid
one, the nearest command for a mistyped command, and ``zoo compare --help``'s keys and presets."""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

CONF = Path(__file__).resolve().parent / "conf"


def nearest(word: str, choices) -> str:
    """" (did you mean X?)" for the closest of ``choices`` to ``word``, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class Parser(argparse.ArgumentParser):
    """argparse, with the nearest valid option named when an unknown one is given."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            options = [o for action in self._actions for o in action.option_strings]
            hints = [nearest(word.split("=")[0], options) for word in message.split(":", 1)[1].split()
                     if word.startswith("-")]
            message += "".join(hint for hint in hints if hint)
        super().error(message)


def description(path: Path, width: int = 76) -> str:
    """A preset's one-line description: the first sentence of its YAML's leading comment, without the command
    it repeats, cut to ``width`` characters."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    if text.startswith("`") and "`:" in text:  # "`zoo compare compare=NAME`: what it is"
        text = text.split("`:", 1)[1].strip()
    text = text.split(". ", 1)[0].rstrip(".")  # its first sentence
    return text if len(text) <= width else text[:width - 3].rsplit(" ", 1)[0] + "..."


def compare_help() -> str:
    """``zoo compare --help``: usage, the comparison's keys with their defaults (the default plan's values) and
    the preset plans with their descriptions."""
    import json

    from omegaconf import OmegaConf

    from zoo.config import compose_compare_config

    plan = OmegaConf.to_container(compose_compare_config([]), resolve=False)
    keys = "\n".join(f"  compare.{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for key, value in plan.items())
    presets = "\n".join(f"  compare={path.stem:<16} {description(path)}"
                        for path in sorted((CONF / "compare").glob("*.yaml")))
    return ("usage: zoo compare [compare=PLAN] [compare.KEY=VALUE ...] [run overrides ...]\n\n"
            "Every override but compare.* goes to the stages and to every run (algo.*, trainer.*,\n"
            "hydra/launcher=...). See docs/comparison.md.\n\n"
            f"presets (zoo/conf/compare/):\n{presets}\n\nkeys, with the default plan's values:\n{keys}\n")
