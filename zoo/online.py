"""Online AI feedback (OAIF; Guo et al. 2024, "Direct Language Model Alignment from Online AI Feedback",
https://arxiv.org/abs/2402.04792): a paired loss (DPO, IPO) trained on fresh on-policy pairs.

Offline DPO learns from pairs sampled once from the reference policy; as the policy moves away from it,
those pairs stop being the policy's own. OAIF instead, at every training step,

1. takes a batch of prompts x,
2. samples two completions y1, y2 ~ pi_theta(. | x) from the policy being trained (temperature 1: the
   policy itself),
3. asks a feedback source (an LM judge, or the world's simulated raters) which is better,
4. and takes one gradient step of the paired loss on (x, y_w, y_l), with the frozen reference as usual.

No reward model is trained and no sample is reused, so there is nothing to go stale. ``OnlinePairs`` is
the batch source for :func:`zoo.trainer.fit` that does 1-3; the loss (``DPOLoss``, ``IPOLoss``) and its
reference are the offline ones, handled by ``fit`` unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.data.batches import StepBatches, process_seed
from zoo.data.collate import PairCollator
from zoo.feedback.base import Labeler, Labels
from zoo.rollout import Samples, sample


class OnlinePairs:
    """Fresh on-policy preference pairs for every micro-batch: a batch source for ``fit``.

    Per micro-batch (``batch_size`` pairs):

    1. the next ``batch_size`` prompts of an endless seeded shuffle (``StepBatches``, one order per process);
    2. two completions per prompt from the current ``policy`` (``zoo.rollout.sample``: eval mode, no grad,
       train mode restored), with seeds derived from (process seed, micro-batch index, 0 or 1);
    3. ``labeler.label(prompts, first_texts, second_texts) -> Labels``; chosen = first where ``first_wins``;
    4. ``PairCollator`` rows from the *sampled* token ids (see below), moved to the accelerator's device,
       plus ``"metrics"`` (``online/...``, floats) that ``fit`` logs with the loss's.

    Tokens. A pair is the token sequence the policy produced, ``prompt_ids + completion_ids``, not a
    re-tokenization of the decoded text (a sampled tokenization need not be the canonical one), ending in
    exactly one EOS, as every offline pair does (``zoo.data.tokenize.tokenize_pair`` appends EOS to each
    standard-format completion, TRL's convention). ``sample`` cuts a completion right after its first EOS,
    so one that ended keeps exactly its sampled tokens; one cut at ``max_new_tokens`` gets the EOS appended
    here, as the offline pairs (sampled with the same cap by the samples stage) get it. Offline and online
    DPO then learn from the same kind of sequence; the EOS of a cut completion was never sampled, so both
    treat the length cap as an end, the convention the evaluation's equal cap also takes.

    Identical pairs (both completions the same token ids, frequent once the policy sharpens) carry no
    preference. They stay in the batch (a fixed shape; resampling costs another generation): for DPO and
    IPO both rows have the same log-probs, so the margin h = 0 and its gradient is exactly zero; they only
    dilute the batch mean. ``online/identical_pairs`` reports their fraction.

    Resuming needs no ``state_dict``: a micro-batch depends only on (seed, process index, micro-batch
    index) and the policy's current weights, which ``fit`` checkpoints. The labelers are stateless given
    their inputs (``SimulatedRaters`` seeds each pair by its content; ``LMJudge``'s cache only memoises). So every step
    is a valid checkpoint (``steps_per_refresh = 1``) and a resumed run sees the batches an uninterrupted
    one would. Like ``Experience``, sampling reseeds torch's global RNG.

    ``grad_accum_steps`` is taken for the same construction as ``Experience``; nothing depends on it,
    since every micro-batch is sampled on its own (the micro-batches of one accumulation window all come
    from the same weights anyway: the optimizer only steps at the end of the window).
    """

    steps_per_refresh = 1  # every micro-batch is sampled fresh: any step is a checkpoint boundary

    def __init__(self, policy: torch.nn.Module, labeler: Labeler, tokenizer, prompts: list, batch_size: int,
                 grad_accum_steps: int, seed: int, max_new_tokens: int, temperature: float = 1.0,
                 max_length: int | None = None, gold_fn: Callable[[list[str]], list[float]] | None = None):
        if batch_size < 1:
            raise ValueError(f"trainer.batch_size must be >= 1, got {batch_size}")
        if batch_size > len(prompts):
            raise ValueError(f"an online micro-batch needs {batch_size} prompts (trainer.batch_size) but the data "
                             f"has {len(prompts)}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.policy, self.labeler, self.tokenizer, self.prompts = policy, labeler, tokenizer, prompts
        self.batch_size, self.grad_accum, self.seed, self.process_seed = batch_size, grad_accum_steps, seed, seed
        self.max_new_tokens, self.temperature, self.gold_fn = max_new_tokens, temperature, gold_fn
        self.collator = PairCollator(tokenizer.pad_token_id, max_length)

    def sample_seed(self, index: int, which: int) -> int:
        """The seed of completion ``which`` (0: first, 1: second) of micro-batch ``index`` on this process."""
        return (self.process_seed * 1_000_003 + index) * 2 + which

    # --- the batch source ---

    def batches(self, accelerator, model: torch.nn.Module, start: int, end: int):
        """Micro-batches ``start..end`` (counted over all processes, as ``fit`` counts them). Each process
        samples its own pairs from its own prompt order; ``model`` (``fit``'s prepared wrapper) is not used:
        sampling calls ``generate`` on the unwrapped ``policy``, the same module."""
        processes = accelerator.num_processes
        if start % processes or end % processes:
            raise ValueError(f"micro-batches {start}..{end} do not split evenly over {processes} processes")
        self.process_seed = process_seed(self.seed, accelerator)
        return self._generate(accelerator.device, start // processes, (end - start) // processes)

    def _generate(self, device, first: int, count: int):
        order = StepBatches(len(self.prompts), self.batch_size, self.process_seed, first, first + count)
        for index, prompt_ids in zip(range(first, first + count), order):
            yield self.pairs([self.prompts[i] for i in prompt_ids], index, device)

    @torch.no_grad()
    def pairs(self, prompts: list, index: int, device) -> dict:
        """One collated micro-batch: ``input_ids``, ``attention_mask``, ``completion_mask`` (2B, T), the B
        chosen sequences first, then the B rejected ones, plus ``metrics``."""
        n = len(prompts)
        first = self._sample(prompts, self.sample_seed(index, 0))
        second = self._sample(prompts, self.sample_seed(index, 1))
        labels = self.labeler.label(prompts, first.texts, second.texts)
        if len(labels.first_wins) != n:
            raise ValueError(f"{type(self.labeler).__name__}.label returned {len(labels.first_wins)} labels "
                             f"for {n} pairs")

        eos = [self.tokenizer.eos_token_id]
        rows = []
        for i in range(n):
            # a completion cut at max_new_tokens ends in EOS as the offline pairs' do (see the class docstring)
            a = first.completion_ids[i] + ([] if first.ended[i] else eos)
            b = second.completion_ids[i] + ([] if second.ended[i] else eos)
            chosen, rejected = (a, b) if labels.first_wins[i] else (b, a)
            # both samples tokenized the prompt the same way (tokenize_prompt), so it is shared
            rows.append({"prompt_ids": first.prompt_ids[i], "chosen_ids": chosen, "rejected_ids": rejected})
        batch = {k: v.to(device) for k, v in self.collator(rows).items()}  # (2B, T) each
        gold = (self.gold_fn(first.texts), self.gold_fn(second.texts)) if self.gold_fn else None
        batch["metrics"] = self.metrics(rows, first, second, labels, gold)
        return batch

    def _sample(self, prompts: list, seed: int) -> Samples:
        # one generate call for the whole micro-batch: ``sample`` seeds each chunk with seed + offset, so
        # a single chunk keeps the seeds of different (index, which) from overlapping
        return sample(self.policy, self.tokenizer, prompts, self.max_new_tokens, self.temperature,
                      batch_size=len(prompts), seed=seed)

    @staticmethod
    def metrics(rows: list[dict], first: Samples, second: Samples, labels: Labels,
                gold: tuple[list[float], list[float]] | None = None) -> dict[str, float]:
        """Per-micro-batch means: the labeler's confidence, identical pairs, lengths (completion tokens,
        EOS included), EOS rate; with ``gold`` (the task's gold rewards of the first and the second
        completions: ``gold_fn``, the world's), the gold margin chosen - rejected and the label noise (how
        often the labeler picked the lower-gold completion of a non-tied pair); a judge's position bias
        when it reports one."""
        n = len(rows)
        metrics = {
            "online/label_confidence": sum(max(p, 1.0 - p) for p in labels.probability) / n,
            "online/identical_pairs": sum(r["chosen_ids"] == r["rejected_ids"] for r in rows) / n,
            "online/chosen_length": sum(len(r["chosen_ids"]) for r in rows) / n,
            "online/rejected_length": sum(len(r["rejected_ids"]) for r in rows) / n,
            "online/eos_rate": (sum(first.ended) + sum(second.ended)) / (2 * n),
        }
        if gold is not None:
            margins = [(r1 - r2) if wins else (r2 - r1) for wins, r1, r2 in zip(labels.first_wins, *gold)]
            metrics["online/gold_margin"] = sum(margins) / n
            decided = [m for m in margins if m != 0]
            if decided:  # absent rather than NaN when gold ties every pair
                metrics["online/label_noise"] = sum(m < 0 for m in decided) / len(decided)
        position_bias = getattr(labels, "position_bias", None)  # a judge's: mean P(first shown) - 1/2
        if position_bias is not None:
            metrics["online/position_bias"] = position_bias
        return metrics
