"""Simulated human raters: Bradley-Terry draws on the differences of a gold reward (the world's VADER).

A rater shown completions a and b of the same prompt prefers a with probability

    P(a > b) = sigmoid((r_gold(a) - r_gold(b)) / temperature)

(Bradley & Terry 1952; the preference model DPO and RLHF assume, Rafailov et al. 2023 Eq. 1). The
temperature is in gold-reward units (VADER compound in [-1, 1]): small differences are coin flips,
large ones are nearly always judged right, so labels are noisy the way people's are. The label-noise
rate (how often the raters disagree with gold on pairs gold does not tie) is measured by the
label stage and written next to the data. The gold reward is a constructor argument (the world's config
passes ``zoo.world.gold.gold_reward``), so the raters work on any task that has one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable

from zoo.feedback.base import Labels


def pair_uniform(seed: int, prompt, first: str, second: str) -> float:
    """A uniform draw in [0, 1) fixed by (seed, prompt, first, second): the same pair always gets the same
    draw, whatever else is labelled with it and wherever it sits in the batch. (A generator seeded once per
    ``label`` call would tie the draw to the batch position instead: under online feedback, every step's
    i-th pair would share one draw, so the label noise would not be independent across steps.)"""
    blob = json.dumps([seed, prompt, first, second], ensure_ascii=False).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big") / 2.0**64


class SimulatedRaters:
    """Noisy raters: Bradley-Terry draws with the given temperature from the gold ``reward(texts)``.

    Each pair's draw is seeded by (seed, prompt, first, second) (:func:`pair_uniform`), so labels are
    reproducible, independent across pairs and batches, and a pair keeps its label in any batch."""

    def __init__(self, reward: Callable[[list[str]], list[float]], temperature: float = 0.1, seed: int = 0):
        if temperature <= 0:
            raise ValueError(f"feedback.source.temperature must be > 0, got {temperature}")
        self.reward = reward
        self.temperature = temperature
        self.seed = seed

    def label(self, prompts: list, first: list[str], second: list[str]) -> Labels:
        """Draw one preference per (prompt, first, second) triple, reproducibly for the seed."""
        r1, r2 = self.reward(first), self.reward(second)
        probs = [1.0 / (1.0 + math.exp(-(a - b) / self.temperature)) for a, b in zip(r1, r2)]
        wins = [pair_uniform(self.seed, x, a, b) < p for x, a, b, p in zip(prompts, first, second, probs)]
        return Labels(wins, probs)
