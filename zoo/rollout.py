"""Sampling completions from a policy (evaluation, preference collection) and PPO's online experience.

Prompts are left-padded for batched generation (decoder-only models continue from the right edge).
Sampling is pure ancestral sampling at ``temperature`` (``top_k=0``, ``top_p=1``), so samples at
temperature 1 come from the policy itself and Monte-Carlo KL estimates on them are unbiased.
Each completion is cut after its first EOS; ``ended`` records whether it produced one.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from zoo.config import RolloutConfig
from zoo.data.batches import StepBatches, process_seed
from zoo.data.collate import DemonstrationCollator
from zoo.data.tokenize import tokenize_prompt
from zoo.feedback.base import Scorer
from zoo.files import kill_point
from zoo.losses.ppo_math import explained_variance
from zoo.models import sequence_logps


@dataclass
class Samples:
    """Completions for a list of prompts (token ids exclude padding; completions include EOS if produced)."""

    prompts: list
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]  # decoded completions, special tokens removed
    ended: list[bool]  # True where the completion stopped at EOS within max_new_tokens


# Bumped whenever the same prompts, seed and settings draw different samples, so the caches of drawn
# samples (the preference-samples stage, the reference's eval samples) are keyed by it. 2: prompts
# generated in length-sorted chunks.
SAMPLING_VERSION = 2


def length_sorted_chunks(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices cut into chunks of ``batch_size`` after a stable sort by length, so a chunk's prompts
    are left-padded to nearly their own length instead of the longest of a random handful. Inside a
    chunk the indices keep their order, so prompts that fit in one chunk are sampled as before.

    >>> length_sorted_chunks([5, 2, 9, 2, 4], 2)
    [[1, 3], [0, 4], [2]]
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [sorted(order[start:start + batch_size]) for start in range(0, len(order), batch_size)]


@torch.no_grad()
def sample(model, tokenizer, prompts: list, max_new_tokens: int, temperature: float = 1.0,
           batch_size: int = 64, seed: int = 0, desc: str | None = None) -> Samples:
    """Sample one completion per prompt, reproducibly for a seed.

    Prompts are generated in chunks of similar length (``length_sorted_chunks``): every padding
    position is a wasted row of attention and KV cache in each of the ``max_new_tokens`` decoding
    steps. Results come back in the prompts' order; chunk ``k`` draws from the generator seeded
    ``seed + k * batch_size``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    all_prompt_ids = [tokenize_prompt(tokenizer, p) for p in prompts]
    completions: list = [None] * len(prompts)
    ended: list = [None] * len(prompts)

    chunks = length_sorted_chunks([len(ids) for ids in all_prompt_ids], batch_size)
    for k, rows in enumerate(tqdm(chunks, desc=desc, disable=desc is None, leave=False)):
        chunk = [all_prompt_ids[i] for i in rows]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        torch.manual_seed(seed + k * batch_size)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=True,
                             temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                             eos_token_id=eos, pad_token_id=pad)
        for i, row in zip(rows, out[:, width:].tolist()):  # (B, new tokens)
            ended[i] = eos in row
            completions[i] = row[: row.index(eos) + 1] if ended[i] else row
    model.train(was_training)
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    return Samples(list(prompts), all_prompt_ids, completions, texts, ended)


# ---------------------------------------------------------------------------------------------
# Online experience for PPO: rollouts from the policy being trained, scored, turned into targets
# ---------------------------------------------------------------------------------------------


class Experience:
    """The batch source for ``fit`` of a loss trained on its own rollouts (an ``OnPolicyLoss``: PPO, RLOO,
    GRPO): per rollout batch of ``rollout_size`` sequences,

    1. take the next ``rollout_size / k`` prompts (a seeded shuffle, resumable like ``StepBatches``), where
       k is the loss's ``samples_per_prompt`` (1 for PPO),
    2. sample k completions each from the current policy (stop at EOS, cut after it); a prompt's k
       completions are consecutive rows, the groups RLOO's and GRPO's baselines are taken over,
    3. score: old log-probs, reference log-probs (both at the sampling temperature), values (when the loss
       has a value model, ``value`` not None), RM scores, and the world's gold reward of the same texts when
       given (``objective/gold``: proxy vs gold),
    4. rewards and advantages through the loss (``shape_rewards`` / ``advantages``: GAE for PPO),
    5. yield ``ppo_epochs`` shuffled passes of minibatches (each split into ``grad_accum`` micro-batches).

    The KL controller and the RM-score normalisation live here and are checkpointed (``state_dict``). With
    several processes, each samples its share of the rollout batch and these statistics, as the advantage
    whitening's, are taken over every process's rows: all processes hold the same state, which the main one
    checkpoints, and train as one process would on the whole batch.
    """

    def __init__(self, loss_fn, policy, value, reference, scorer: Scorer, tokenizer, prompts: list,
                 settings: RolloutConfig, batch_size: int, grad_accum_steps: int, seed: int,
                 max_length: int | None = None, gold_fn=None):
        self.loss_fn, self.policy, self.value, self.reference = loss_fn, policy, value, reference
        self.scorer, self.tokenizer, self.prompts, self.settings = scorer, tokenizer, prompts, settings
        self.micro_batch, self.grad_accum, self.seed, self.process_seed = batch_size, grad_accum_steps, seed, seed
        self.max_length, self.gold_fn = max_length, gold_fn
        self.rollout_size = batch_size * grad_accum_steps * settings.num_minibatches  # sequences
        k = self.samples_per_prompt = loss_fn.samples_per_prompt
        if self.rollout_size % k:
            raise ValueError(f"a rollout batch of {self.rollout_size} sequences (trainer.batch_size x grad_accum_steps "
                             f"x rollout.num_minibatches) is not a whole number of groups of "
                             f"algo.loss.samples_per_prompt={k} completions")
        self.prompts_per_rollout = self.rollout_size // k
        if self.prompts_per_rollout > len(prompts):
            raise ValueError(f"a rollout batch needs {self.prompts_per_rollout} prompts (trainer.batch_size x "
                             f"grad_accum_steps x rollout.num_minibatches / algo.loss.samples_per_prompt) but the "
                             f"data has {len(prompts)}")
        self.steps_per_refresh = settings.ppo_epochs * settings.num_minibatches
        self.kl_controller = loss_fn.kl_controller()
        self.score_mean: float | None = None  # RM-score normalisation, fixed on the first rollout
        self.score_std: float | None = None
        self.autocast = contextlib.nullcontext  # replaced by the accelerator's in ``batches``
        self.accelerator = None  # set in ``batches``: the rollout's statistics are over all its processes

    # --- checkpointed state (accelerate ``register_for_checkpointing``) ---

    def state_dict(self) -> dict:
        return {"kl_coef": self.kl_controller.value, "score_mean": self.score_mean, "score_std": self.score_std}

    def load_state_dict(self, state: dict) -> None:
        self.kl_controller.value = state["kl_coef"]
        self.score_mean, self.score_std = state["score_mean"], state["score_std"]

    # --- the batch source ---

    def batches(self, accelerator, model, start: int, end: int):
        """Micro-batches ``start..end`` (counted over all processes, as ``fit`` counts them); ``start``
        falls on a rollout boundary, where ``fit`` checkpoints. Each process samples its own rollouts
        (its own prompt order) and the statistics that drive training are taken over all of them (see
        ``rollout``)."""
        processes = accelerator.num_processes
        per_rollout = self.steps_per_refresh * self.grad_accum * processes
        if start % per_rollout:
            raise ValueError(f"cannot resume PPO mid-rollout (micro-batch {start} of {per_rollout} per rollout)")
        self.scorer.module.to(accelerator.device)
        self.reference.to(accelerator.device)  # fit moves it only for losses that declare needs_reference
        self.autocast = accelerator.autocast  # old log-probs / values in the same precision as the update
        self.process_seed = process_seed(self.seed, accelerator)
        self.accelerator = accelerator
        return self._generate(accelerator.device, start // per_rollout, (end - start) // processes)

    def over_processes(self, total: torch.Tensor) -> torch.Tensor:
        """A sum over the processes that each hold a share of the rollout batch (the sum itself on one)."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return total
        return self.accelerator.reduce(total, reduction="sum")

    def all_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """(N,) this process's rows -> (N x processes,) every process's, in process order."""
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return rows
        return self.accelerator.gather(rows)

    def _generate(self, device, first_rollout: int, count: int):
        num_rollouts = -(-count // (self.steps_per_refresh * self.grad_accum))
        order = StepBatches(len(self.prompts), self.prompts_per_rollout, self.process_seed, first_rollout,
                            first_rollout + num_rollouts)
        left = count
        for index, prompt_ids in zip(range(first_rollout, first_rollout + num_rollouts), order):
            rollout, metrics = self.rollout([self.prompts[i] for i in prompt_ids], index, device)
            for micro in self.minibatches(rollout, index, metrics["objective/kl_coef"]):
                if left == 0:
                    return
                left -= 1
                yield {**micro, "metrics": metrics}

    @torch.no_grad()
    def rollout(self, prompts: list, index: int, device) -> tuple[dict, dict[str, float]]:
        """Sample and score one rollout batch of ``samples_per_prompt`` completions for each of ``prompts``;
        returns its tensors (N, ...), a prompt's completions in consecutive rows, and its metrics."""
        s, k = self.settings, self.samples_per_prompt
        prompts = [prompt for prompt in prompts for _ in range(k)]  # (N,) each prompt k times, side by side
        samples = sample(self.policy, self.tokenizer, prompts, s.max_new_tokens, s.temperature,
                         batch_size=len(prompts), seed=self.process_seed * 1_000_003 + index)
        rows = [{"prompt_ids": p, "completion_ids": c} for p, c in zip(samples.prompt_ids, samples.completion_ids)]
        seqs = DemonstrationCollator(self.tokenizer.pad_token_id, self.max_length)(rows)
        seqs = {k: v.to(device) for k, v in seqs.items()}  # (N, T) right-padded prompt + completion
        mask = seqs["completion_mask"][:, 1:].float()  # (N, T-1) response tokens

        # old log-probs, reference log-probs and values, in chunks (no grad)
        old, ref, values = [], [], []
        self.policy.eval()
        with self.autocast():
            for lo in range(0, len(rows), s.forward_batch_size):
                chunk = {k: v[lo:lo + s.forward_batch_size] for k, v in seqs.items()}
                old.append(sequence_logps(self.policy, chunk, s.temperature).token_logps)
                with self.reference.model(self.policy) as ref_model:
                    ref.append(sequence_logps(ref_model, chunk, s.temperature).token_logps)
                if self.value is not None:
                    values.append(self.value(chunk["input_ids"], chunk["attention_mask"])[:, :-1])
        self.policy.train()
        old_logps, ref_logps = torch.cat(old), torch.cat(ref)
        old_values = torch.cat(values).float() * mask if self.value is not None else None

        # scores: the RM on the texts, normalised on the first rollout (the initial policy's samples, on
        # every process: each process's share of a rollout batch is normalised alike)
        kill_point("rollout")  # sampled, not yet scored
        raw = self.scorer(prompts, samples.texts, device)  # (N,)
        if self.loss_fn.normalize_scores and self.score_mean is None:
            first = self.all_rows(raw)  # (N x processes,)
            self.score_mean, self.score_std = first.mean().item(), first.std().clamp(min=1e-6).item()
        scores = (raw - self.score_mean) / self.score_std if self.loss_fn.normalize_scores else raw
        ended = torch.tensor(samples.ended, device=device)
        kl_coef = self.kl_controller.value
        rewards, kl = self.loss_fn.shape_rewards(scores, ended, old_logps, ref_logps, mask, kl_coef)
        advantages, returns = self.loss_fn.advantages(rewards, old_values, mask, self.over_processes)

        seq_kl = (old_logps - ref_logps).mul(mask).sum(1)  # (N,) k1 per sequence, TRL's objective/kl
        metrics = {
            "objective/kl": seq_kl.mean().item(),
            "objective/entropy": (-old_logps * mask).sum(1).mean().item(),  # sampled-token estimate, as TRL
            "objective/scores": raw.mean().item(),
            "objective/non_score_reward": (-kl_coef * kl).sum(1).mean().item() if self.loss_fn.kl_penalty == "reward"
            else 0.0,
            "objective/rlhf_reward": rewards.sum(1).mean().item(),
            "objective/kl_coef": kl_coef,
            "rollout/length": mask.sum(1).mean().item(),
            "rollout/eos_rate": ended.float().mean().item(),
        }
        if old_values is not None:
            metrics["val/explained_variance_rollout"] = explained_variance(old_values, returns, mask).item()
        if k > 1:  # groups whose k rewards all tie give RLOO's and GRPO's baselines nothing to compare (TRL's name)
            metrics["rollout/frac_reward_zero_std"] = (rewards.sum(1).view(-1, k).std(1) == 0).float().mean().item()
        if self.gold_fn is not None:
            metrics["objective/gold"] = sum(self.gold_fn(samples.texts)) / len(prompts)
        batch_kl = self.all_rows(seq_kl)  # the controller's input: the whole rollout batch's KL
        self.kl_controller.update(batch_kl.mean().item(), len(batch_kl))
        rollout = {**seqs, "old_logps": old_logps * mask, "ref_logps": ref_logps * mask, "advantages": advantages}
        if old_values is not None:
            rollout.update(old_values=old_values, returns=returns)
        # a non-finite RM score, value or advantage marks every minibatch of the rollout: fit stops the run or
        # drops them (trainer.on_nonfinite), naming the quantity
        for quantity, values in (("reward", raw), ("value", old_values), ("advantage", advantages)):
            if values is not None and not torch.isfinite(values).all():
                rollout["nonfinite"] = quantity
                break
        return rollout, metrics

    def minibatches(self, rollout: dict, index: int, kl_coef: float):
        """``ppo_epochs`` seeded shuffles of the rollout, cut into micro-batches of ``batch_size`` rows."""
        nonfinite = rollout.pop("nonfinite", None)
        n = rollout["input_ids"].shape[0]
        for epoch in range(self.settings.ppo_epochs):
            order = list(range(n))
            random.Random(f"{self.process_seed}-{index}-{epoch}").shuffle(order)
            for lo in range(0, n - self.micro_batch + 1, self.micro_batch):
                rows = torch.tensor(order[lo:lo + self.micro_batch])
                micro = {k: v[rows] for k, v in rollout.items()}
                width = int(micro["attention_mask"].sum(1).max())  # trim padding shared by the whole micro-batch
                micro = {k: v[:, :width] if k in ("input_ids", "attention_mask", "completion_mask")
                         else v[:, :width - 1] for k, v in micro.items()}
                yield {**micro, "temperature": self.settings.temperature, "kl_coef": kl_coef,
                       **({"nonfinite": nonfinite} if nonfinite else {})}
