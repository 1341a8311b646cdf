"""The comparison metrics (DESIGN sec. 6) of a trained policy against its reference.

On held-out prompts, one sample per prompt from the policy and one from the reference:

- ``gold_reward``: mean gold reward of policy samples, with a normal-approximation 95% CI;
- ``kl_to_ref``: sequence-level KL(pi || pi_ref), Monte-Carlo over policy samples:
  mean over prompts of sum_t [log pi(y_t|.) - log pi_ref(y_t|.)] (unbiased at temperature 1);
- ``win_rate_vs_ref``: fraction of prompts where the policy's sample has the higher gold reward (ties 1/2);
- ``judge_win_rate_vs_ref``: the same comparison made by an LM judge (both orders averaged, ties 1/2), so
  a method's win rate as its AI labeler sees it sits next to the gold one; ``judge_position_bias`` too;
- ``mean_length`` (completion tokens), ``distinct_2`` (distinct word bigrams / all bigrams),
  ``eos_rate`` (completions that ended with EOS);
- what shows reward hacking on any text: ``nll_under_ref`` (mean per-token negative log-likelihood of
  the policy's samples under the reference; ``ref_nll_under_ref`` of the reference's own) and
  ``repeated_3grams`` (the fraction of a sample's word 3-grams that repeat an earlier one in it, averaged;
  ``ref_repeated_3grams``);
- ``fluency``: with a task that has a grammar (the world's), the fraction of grammatical prompt +
  completion texts; otherwise the mean per-token log-likelihood under the reference (``-nll_under_ref``);
- with a task that has them: ``other_rewards`` (scorers the task keeps out of training, e.g. another sentiment lexicon:
  policy mean, reference mean and win rate for each).
"""

from __future__ import annotations

import math
import statistics
from typing import Protocol

import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig

from zoo.data.collate import DemonstrationCollator, PairCollator
from zoo.data.load import tokenize_rows
from zoo.models import Reference, sequence_logps, sequence_scores
from zoo.refcache import ReferenceSamplesCache, reference_setting
from zoo.rollout import SAMPLING_VERSION, Samples, sample


class TaskMetrics(Protocol):
    """What a task measures samples by beyond the models themselves (``data.metrics``; the world's is
    ``zoo.world.metrics.WorldMetrics``, the reviews task's ``zoo.reviews.metrics.ReviewMetrics``): a gold
    reward and a judge for the judge win rate (or None). Optional: ``fluency(prompts, completions) ->
    list[bool]`` (a grammar check) and ``other_rewards(texts) -> {name: list[float]}`` (held-out scorers)."""

    def gold_reward(self, texts: list[str]) -> list[float]:
        ...

    def judge(self):  # an LMJudge-like object with ``judge(prompts, first, second) -> Judgement``, or None
        ...


def normal_ci_over_prompts(values: list[float]) -> dict[str, float]:
    """Mean over evaluation prompts with a 95% normal-approximation interval (1.96 standard errors):
    ``{"mean", "ci95_low", "ci95_high", "n"}``, the form of ``gold_reward`` and ``kl_to_ref`` in
    ``metrics.json``. The report's interval over seeds is ``zoo.report.t_ci_over_seeds``."""
    n = len(values)
    mean = sum(values) / n
    half = 1.96 * statistics.stdev(values) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "ci95_low": mean - half, "ci95_high": mean + half, "n": n}


def win_rate(a: list[float], b: list[float]) -> float:
    """Fraction of paired items where a beats b; ties count one half."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)) / len(a)


def repeated_ngram_rate(texts: list[str], n: int = 3) -> float:
    """Mean over texts of the fraction of word n-grams that repeat an earlier n-gram of the same text
    ("the film was great, the film was great" -> 3 of 6); texts shorter than n words count 0."""
    rates = []
    for words in (t.split() for t in texts):
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        rates.append((len(grams) - len(set(grams))) / len(grams) if grams else 0.0)
    return sum(rates) / len(rates) if rates else 0.0


def distinct_n(texts: list[str], n: int = 2) -> float:
    """Distinct word n-grams over all n-grams in ``texts`` (Li et al. 2016); 0 when there are none."""
    grams = [tuple(w[i:i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def completion_logps(model, samples: Samples, pad_token_id: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log pi(y|x) summed over each completion (N,), completion lengths (N,)) under ``model``."""
    device = next(model.parameters()).device
    collate = DemonstrationCollator(pad_token_id)
    rows = [{"prompt_ids": p, "completion_ids": c} for p, c in zip(samples.prompt_ids, samples.completion_ids)]
    sums, counts = [], []
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[start:start + batch_size]).items()}
        out = sequence_logps(model, batch)
        sums.append(out.logps.cpu())
        counts.append(out.num_tokens.cpu())
    return torch.cat(sums), torch.cat(counts)


def evaluate(policy, reference: Reference, tokenizer, prompts: list, max_new_tokens: int, temperature: float,
             batch_size: int, seed: int, task: TaskMetrics | None = None,
             reference_samples: Samples | None = None, judge=None,
             reference_cache: ReferenceSamplesCache | None = None) -> tuple[dict, list[dict]]:
    """Metrics and per-prompt sample rows for ``policy`` vs ``reference`` on ``prompts``; gold reward, win
    rate and fluency with ``task``'s metrics, the judge win rate with ``judge``. The reference's samples and
    their log-probs come from ``reference_cache`` when a run with the same reference drew them before."""
    pad = tokenizer.pad_token_id
    policy_samples = sample(policy, tokenizer, prompts, max_new_tokens, temperature, batch_size, seed,
                            desc="eval: policy samples")
    cached = reference_cache.load() if reference_cache is not None and reference_samples is None else None
    with reference.model(policy) as ref_model:
        if cached is not None:
            reference_samples, ref_on_ref, ref_counts = cached
        elif reference_samples is None:
            reference_samples = sample(ref_model, tokenizer, prompts, max_new_tokens, temperature, batch_size,
                                       seed + 1, desc="eval: reference samples")
        ref_logps, _ = completion_logps(ref_model, policy_samples, pad, batch_size)
        if cached is None:
            ref_on_ref, ref_counts = completion_logps(ref_model, reference_samples, pad, batch_size)
            if reference_cache is not None:
                reference_cache.save(reference_samples, ref_on_ref, ref_counts)
    pol_logps, lengths = completion_logps(policy, policy_samples, pad, batch_size)
    kl = (pol_logps - ref_logps).tolist()

    metrics = {
        "kl_to_ref": normal_ci_over_prompts(kl),
        "mean_length": lengths.float().mean().item(),
        "ref_mean_length": ref_counts.float().mean().item(),
        "distinct_2": distinct_n(policy_samples.texts),
        "eos_rate": sum(policy_samples.ended) / len(prompts),
        "num_eval_prompts": len(prompts),
    }
    policy_rewards = ref_rewards = None
    if task is not None:
        policy_rewards, ref_rewards = task.gold_reward(policy_samples.texts), task.gold_reward(reference_samples.texts)
        metrics["gold_reward"] = normal_ci_over_prompts(policy_rewards)
        metrics["ref_gold_reward"] = normal_ci_over_prompts(ref_rewards)
        metrics["win_rate_vs_ref"] = win_rate(policy_rewards, ref_rewards)
    judged = None
    if judge is not None:
        judged = judge.judge(prompts, policy_samples.texts, reference_samples.texts)
        metrics["judge_win_rate_vs_ref"] = win_rate(judged.prob_first, [0.5] * len(prompts))
        metrics["judge_position_bias"] = judged.position_bias
    metrics["nll_under_ref"] = (-ref_logps.sum() / lengths.sum().clamp(min=1)).item()
    metrics["ref_nll_under_ref"] = (-ref_on_ref.sum() / ref_counts.sum().clamp(min=1)).item()
    metrics["repeated_3grams"] = repeated_ngram_rate(policy_samples.texts)
    metrics["ref_repeated_3grams"] = repeated_ngram_rate(reference_samples.texts)
    if hasattr(task, "fluency"):  # the task's own check (the world's grammar reads prompt + completion)
        for key, texts in (("fluency", policy_samples.texts), ("ref_fluency", reference_samples.texts)):
            metrics[key] = sum(task.fluency(prompts, texts)) / len(prompts)
    else:  # no grammar (DESIGN sec. 3 names fluency for every run): the mean per-token log-likelihood under the reference
        metrics["fluency"] = -metrics["nll_under_ref"]
    if hasattr(task, "other_rewards"):  # scorers kept out of training: does a gain carry over to them?
        mine, theirs = task.other_rewards(policy_samples.texts), task.other_rewards(reference_samples.texts)
        metrics["other_rewards"] = {name: {"mean": sum(mine[name]) / len(prompts),
                                           "ref_mean": sum(theirs[name]) / len(prompts),
                                           "win_rate_vs_ref": win_rate(mine[name], theirs[name])} for name in mine}

    rows = []
    for i, prompt in enumerate(prompts):
        row = {"prompt": prompt, "completion": policy_samples.texts[i], "ref_completion": reference_samples.texts[i],
               "kl": kl[i], "length": int(lengths[i])}
        if policy_rewards is not None:
            row.update(gold_reward=policy_rewards[i], ref_gold_reward=ref_rewards[i])
        if judged is not None:
            row["judge_prob_policy_wins"] = judged.prob_first[i]
        rows.append(row)
    return metrics, rows


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties), without scipy."""
    def ranks(x: list[float]) -> torch.Tensor:
        t = torch.tensor(x, dtype=torch.float64)
        order = t.argsort()
        r = torch.empty_like(t)
        r[order] = torch.arange(len(x), dtype=torch.float64)
        for value in t.unique():  # ties share their average rank
            tied = t == value
            r[tied] = r[tied].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@torch.no_grad()
def evaluate_reward_model(model, tokenizer, pairs: list[dict], max_length: int | None, batch_size: int,
                          source: str = "held-out pairs") -> tuple[dict, list[dict]]:
    """Held-out pairwise accuracy of a reward model vs the raters' labels and vs gold, and rank
    correlation of its scores with gold. ``pairs`` are validated rows (with ``chosen_gold`` /
    ``rejected_gold`` when the data has gold); pairs whose prompt fills ``max_length`` are left out."""
    tokens, _ = tokenize_rows(pairs, "pairs", tokenizer, source, max_length, skip_bad_rows=True)
    pairs = [pairs[t["row"]] for t in tokens]  # keep rows and scores aligned if any pair was skipped
    collator = PairCollator(tokenizer.pad_token_id, max_length)
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for start in range(0, len(tokens), batch_size):
        batch = {k: v.to(device) for k, v in collator(tokens[start:start + batch_size]).items()}
        c, r = sequence_scores(model, batch).scores.chunk(2)
        chosen += c.tolist()
        rejected += r.tolist()
    metrics = {"rm_accuracy_vs_labels": sum(c > r for c, r in zip(chosen, rejected)) / len(pairs),
               "num_eval_pairs": len(pairs)}
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"], "score_chosen": c,
             "score_rejected": r} for p, c, r in zip(pairs, chosen, rejected)]
    if all("chosen_gold" in p for p in pairs):
        decided = [(c - r, p["chosen_gold"] - p["rejected_gold"]) for p, c, r in zip(pairs, chosen, rejected)
                   if p["chosen_gold"] != p["rejected_gold"]]
        n = len(decided)  # 0 when gold ties every held-out pair (a few pairs of short replies): nan, not a crash
        metrics["rm_accuracy_vs_gold"] = sum((dr > 0) == (dg > 0) for dr, dg in decided) / n if n else float("nan")
        metrics["labels_accuracy_vs_gold"] = sum(dg > 0 for _, dg in decided) / n if n else float("nan")  # the raters' ceiling
        metrics["num_eval_pairs_decided_by_gold"] = n
        gold = [p["chosen_gold"] for p in pairs] + [p["rejected_gold"] for p in pairs]
        metrics["rm_spearman_gold"] = spearman(chosen + rejected, gold)
        for row, p in zip(rows, pairs):
            row.update(chosen_gold=p["chosen_gold"], rejected_gold=p["rejected_gold"])
    return metrics, rows


def evaluate_policy_run(cfg: DictConfig, policy, reference: Reference, tokenizer, prompts: list,
                        task: TaskMetrics | None) -> tuple[dict, list[dict]]:
    """A run's policy evaluation (``eval.*``): with task metrics, gold reward, win rate, fluency and the
    task's judge; without, an LM judge given as feedback also measures the win rate
    (``eval.judge_with_feedback``)."""
    judge = task.judge() if task is not None else None  # None: the task has no judge of its own
    if judge is None and cfg.eval.judge_with_feedback and hasattr(get_object(cfg.feedback.source._target_), "judge"):
        judge = instantiate(cfg.feedback.source)
    seed = 10_000 + cfg.seed
    cache = None
    if cfg.eval.get("reference_cache", True) and reference.source is not None:
        cache = ReferenceSamplesCache(cfg.stages.cache_dir, {
            **reference_setting(cfg, reference), "prompts": prompts, "seed": seed,
            "max_new_tokens": cfg.eval.max_new_tokens, "temperature": cfg.eval.temperature,
            "batch_size": cfg.eval.batch_size, "sampling": SAMPLING_VERSION,
            "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id,
            "chat_template": tokenizer.chat_template})
    return evaluate(policy, reference, tokenizer, prompts, cfg.eval.max_new_tokens, cfg.eval.temperature,
                    cfg.eval.batch_size, seed=seed, task=task, judge=judge, reference_cache=cache)


def evaluate_reward_run(cfg: DictConfig, model, reference, tokenizer, pairs: list, task: TaskMetrics | None
                        ) -> tuple[dict, list[dict]]:
    """A reward-model run's evaluation: held-out pairwise accuracy (vs labels and gold) and rank correlation."""
    return evaluate_reward_model(model, tokenizer, pairs, cfg.data.max_length, cfg.eval.batch_size)
