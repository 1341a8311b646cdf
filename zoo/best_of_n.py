"""Best-of-N sampling: the baseline every RL method's reward-vs-KL frontier is judged against.

For each prompt, draw N completions from the reference and keep the one the reward model scores
highest. Nothing is trained, so the only price is N samples and N reward-model calls per prompt.

We draw one pool of M reference samples per prompt and read every N <= M off it exactly. A random
N-subset of M i.i.d. samples is itself N i.i.d. samples, so averaging best-of-N over all N-subsets of
the pool is an unbiased estimate of best-of-N (a U-statistic). The pool sample of rank i (1 = lowest
score) is the best of a random N-subset with probability

    C(i - 1, N - 1) / C(M, N),

levels of tied scores sharing their mass evenly. Every reported reward metric (gold reward, win rate,
length, fluency, RM score) is the expectation under these weights, so it carries no selection noise.

KL to the reference. With continuous scores, pi_N(y) / pi_ref(y) = N F(s(y))^(N-1) and

    KL(pi_N || pi_ref) = log N - (N - 1) / N

exactly (Stiennon et al. 2020); when completions can repeat, as they do when the
reference puts much mass on a few strings, it is only an upper bound (Beirami et al. 2024). We also
estimate it on the pool: the KL between best-of-N *with replacement* from the pool and the pool itself,

    KL_hat = sum_j w_j log(M w_j),   w_j = F_M(s_j)^N - F_M^-(s_j)^N  (split over ties),

F_M(s) = #(scores <= s) / M and F_M^-(s) = #(scores < s) / M. (The subset weights above would give
log M at N = M, which says more about the pool than about best-of-N.) Identical completions tie, so
they share one level and the estimate falls below the bound exactly where completions repeat. The finite pool biases it low by little: with
distinct completions it is 3.134 nats for N = M = 64 (bound 3.175), 3.164 from M = 128, 1.832 for
N = 16 from M = 64 (1.835).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

from zoo.builders import reward_model_scorer
from zoo.config import portable
from zoo.data.load import read_rows
from zoo.evaluate import completion_logps, distinct_n, normal_ci_over_prompts, repeated_ngram_rate
from zoo.data.prompts import prompts_file
from zoo.files import write_atomically
from zoo.models import load_causal_lm, model_tokenizer
from zoo.rollout import sample
from zoo.stages import prepare


def kl_bound(n: int) -> float:
    """log N - (N - 1) / N: the KL of best-of-N to its reference with continuous scores, an upper bound
    when completions can repeat. 0 for N = 1 (the reference itself)."""
    if n < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {n}")
    return math.log(n) - (n - 1) / n


def keep_probs(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(P, M) probabilities that best-of-``n`` with replacement from each row's pool of M scores keeps each
    sample; tied samples share their level's probability equally. Each row sums to 1.

    scores: (P, M) reward-model scores, one row of M pool samples per prompt.
    """
    m = scores.shape[-1]
    below = (scores.unsqueeze(-1) > scores.unsqueeze(-2)).sum(-1).double()  # (P, M): #{j: s_j < s_i}
    tied = (scores.unsqueeze(-1) == scores.unsqueeze(-2)).sum(-1).double()  # (P, M): #{j: s_j = s_i}, >= 1
    return (((below + tied) / m) ** n - (below / m) ** n) / tied


def subset_keep_probs(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(P, M) probabilities that each pool sample is the best of a uniformly random ``n``-subset of its row's
    pool (without replacement); tied samples share their level's probability equally. Each row sums to 1.

    A level whose scores are >= those of ``a`` samples and > those of ``b`` gets (C(a, n) - C(b, n)) / C(M, n).
    scores: (P, M), n <= M.
    """
    m = scores.shape[-1]
    if not 1 <= n <= m:
        raise ValueError(f"best-of-{n} from a pool of {m}: N must be in 1..{m}")
    below = (scores.unsqueeze(-1) > scores.unsqueeze(-2)).sum(-1).double()  # (P, M)
    tied = (scores.unsqueeze(-1) == scores.unsqueeze(-2)).sum(-1).double()

    def comb_ratio(a: torch.Tensor) -> torch.Tensor:  # C(a, n) / C(M, n), 0 where a < n
        log_c = torch.lgamma(a + 1) - torch.lgamma(a - n + 1).where(a >= n, torch.zeros_like(a))
        ratio = (log_c - math.lgamma(m + 1) + math.lgamma(m - n + 1)).exp()
        return torch.where(a >= n, ratio, torch.zeros_like(a))

    return (comb_ratio(below + tied) - comb_ratio(below)) / tied


def kl_estimate(scores: torch.Tensor, n: int) -> torch.Tensor:
    """(P,) per-prompt KL in nats between best-of-``n`` on each prompt's pool and the pool itself:
    sum_j w_j log(M w_j), with w = ``keep_probs`` (0 log 0 = 0). scores: (P, M)."""
    weights = keep_probs(scores, n)
    terms = weights * torch.log(scores.shape[-1] * weights)
    return torch.where(weights > 0, terms, torch.zeros_like(terms)).sum(-1)


def win_probs(gold: torch.Tensor) -> torch.Tensor:
    """(P, M) probability that each pool sample beats an independent reference sample by gold reward (ties
    count half), the other M - 1 samples of its prompt's pool standing in for the reference."""
    m = gold.shape[-1]
    wins = (gold.unsqueeze(-1) > gold.unsqueeze(-2)).double() + 0.5 * (gold.unsqueeze(-1) == gold.unsqueeze(-2))
    return (wins.sum(-1) - 0.5) / (m - 1)  # minus the sample's tie with itself


def expectations(weights: torch.Tensor, values: torch.Tensor) -> list[float]:
    """Per-prompt expectations sum_j w_ij v_ij of ``values`` (P, M) under ``weights`` (P, M)."""
    return (weights * values.double()).sum(-1).tolist()


# ------------------------------------------------------------------------------------------------
# The baseline on the world: one pool per prompt from the SFT reference, every N read off it
# ------------------------------------------------------------------------------------------------


def run_best_of_n(cfg, out_dir: Path, ns: list[int], num_prompts: int, pool_size: int) -> list[dict]:
    """Best-of-N for each N in ``ns`` (N = 1 is the reference itself) on the first ``num_prompts``
    eval prompts, selected by the reward model of ``cfg``'s feedback (the cached reward stage).

    Writes one run dir per N under ``out_dir`` (``sft/`` for N = 1, ``reference/`` on a task without an SFT
    stage, ``best_of_N/`` otherwise) with metrics.json in the run-dir contract, so ``zoo report`` reads them
    next to trained policies, and samples.jsonl (per prompt, the best of the pool's first N samples: one
    realisation, for reading). Returns the metrics written."""
    if cfg.data.metrics is None:
        raise ValueError(f"best-of-N is measured by gold reward, which data={cfg.data.name} does not have "
                         f"(data.metrics)")
    bad = [n for n in ns if n < 1 or n > pool_size]
    if bad:
        raise ValueError(f"best-of-N sizes must be in 1..pool_size ({pool_size}), got {bad}")
    task = instantiate(cfg.data.metrics)
    stages = prepare(cfg, ["reference", "reward_model"])
    reference_path, reward_path = str(stages.reference.path), str(stages.reward_model.path)
    started = time.perf_counter()
    m = cfg.model
    tokenizer = model_tokenizer(m, reference_path)
    model = load_causal_lm(reference_path, m.dtype, m.trust_remote_code,
                           attn_implementation=m.get("attn_implementation")).eval()
    if cfg.data.eval_path:
        prompts = [row["prompt"] for row in read_rows(Path(cfg.data.eval_path))][:num_prompts]
    elif cfg.data.get("eval_split") and cfg.data.prompts_path:  # a hub dataset's test prompts (data=hub/imdb)
        prompts = [row["prompt"] for row in read_rows(prompts_file(cfg, cfg.data.eval_split))][:num_prompts]
    else:
        raise ValueError(f"best-of-N samples evaluation prompts, and data={cfg.data.name} has none "
                         f"(data.eval_path, or data.eval_split of data.prompts_path)")
    p, m = len(prompts), pool_size
    pool_prompts = [prompt for prompt in prompts for _ in range(m)]  # prompt-major: item i * M + j
    pool = sample(model, tokenizer, pool_prompts, cfg.eval.max_new_tokens, cfg.eval.temperature,
                  cfg.eval.batch_size, seed=20_000 + cfg.seed, desc=f"best-of-N: {m} reference samples x {p} prompts")
    lengths = torch.tensor([len(ids) for ids in pool.completion_ids])
    scorer = reward_model_scorer(cfg, model, reward_path, tokenizer)
    scores = scorer(pool_prompts, pool.texts, next(model.parameters()).device).cpu()
    gold = torch.tensor(task.gold_reward(pool.texts), dtype=torch.float64)
    # the hacking signals every evaluation reports: each sample's NLL under the reference (the pool's own
    # model) and its repeated 3-grams; the task's grammar when it has one
    ref_logps, _ = completion_logps(model, pool, tokenizer.pad_token_id, cfg.eval.batch_size)
    repeats = torch.tensor([repeated_ngram_rate([text]) for text in pool.texts], dtype=torch.float64)
    grammatical = (torch.tensor([float(ok) for ok in task.fluency(pool_prompts, pool.texts)])
                   if hasattr(task, "fluency") else None)
    others = {name: torch.tensor(values, dtype=torch.float64)
              for name, values in (task.other_rewards(pool.texts) if hasattr(task, "other_rewards") else {}).items()}
    seconds = time.perf_counter() - started
    # (P, M) views: row = prompt, column = pool sample
    scores, gold, lengths = scores.view(p, m), gold.view(p, m), lengths.view(p, m).double()
    nll_sums, repeats = -ref_logps.view(p, m).double(), repeats.view(p, m)
    grammatical = grammatical.view(p, m) if grammatical is not None else None
    others = {name: values.view(p, m) for name, values in others.items()}
    wins = win_probs(gold)
    texts = [pool.texts[i * m:(i + 1) * m] for i in range(p)]

    # N = 1 is the reference itself: the SFT stage's policy where the task has one, else the model as given
    reference_name = "sft" if cfg.data.sft_stage else "reference"
    written = []
    for n in ns:
        weights = subset_keep_probs(scores, n)  # unbiased for best-of-n's rewards; the KL uses keep_probs
        best_of_first_n = scores[:, :n].argmax(-1).tolist()  # one realisation, for samples.jsonl
        shown = [texts[i][j] for i, j in enumerate(best_of_first_n)]
        metrics = {
            "algo": reference_name if n == 1 else "best_of_n", "feedback": "none" if n == 1 else cfg.feedback.name,
            "tag": "" if n == 1 else f"N={n}", "n": n, "model": cfg.model.name, "data": cfg.data.name,
            "seed": cfg.seed, "status": "finished",
            "gold_reward": normal_ci_over_prompts(expectations(weights, gold)),
            "ref_gold_reward": normal_ci_over_prompts(gold.mean(-1).tolist()),
            "kl_to_ref": normal_ci_over_prompts(kl_estimate(scores, n).tolist()),
            "kl_bound": kl_bound(n),
            "win_rate_vs_ref": sum(expectations(weights, wins)) / p,
            "rm_score": sum(expectations(weights, scores)) / p,
            "mean_length": sum(expectations(weights, lengths)) / p,
            # per token, as evaluate's: expected NLL summed over a reply / expected reply length
            "nll_under_ref": sum(expectations(weights, nll_sums)) / max(1.0, sum(expectations(weights, lengths))),
            "ref_nll_under_ref": (nll_sums.sum() / lengths.sum().clamp(min=1)).item(),
            "repeated_3grams": sum(expectations(weights, repeats)) / p,
            "ref_repeated_3grams": repeats.mean().item(),
            "distinct_2": distinct_n(shown),
            "train_seconds": 0.0,  # nothing is trained: the cost is n samples + n RM calls per prompt at inference
            "pool_seconds": seconds, "samples_per_prompt": n, "pool_size": m, "num_eval_prompts": p,
            "reference": portable(reference_path, cfg.stages.cache_dir),
            "reward_model": portable(reward_path, cfg.stages.cache_dir),
        }
        # fluency as evaluate's: the task's grammar, else the mean per-token log-likelihood under the reference
        metrics["fluency"] = (sum(expectations(weights, grammatical)) / p if grammatical is not None
                              else -metrics["nll_under_ref"])
        if others:  # scorers kept out of training, as evaluate reports them
            metrics["other_rewards"] = {name: {"mean": sum(expectations(weights, values)) / p,
                                               "ref_mean": values.mean().item(),
                                               "win_rate_vs_ref": sum(expectations(weights, win_probs(values))) / p}
                                        for name, values in others.items()}
        run_dir = out_dir / (reference_name if n == 1 else f"best_of_{n}")
        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomically(run_dir / "samples.jsonl", "".join(
            json.dumps({"prompt": prompt, "completion": shown[i], "ref_completion": texts[i][0],
                        "gold_reward": gold[i, best_of_first_n[i]].item(), "ref_gold_reward": gold[i, 0].item()}) + "\n"
            for i, prompt in enumerate(prompts)))
        write_atomically(run_dir / "metrics.json", json.dumps(metrics, indent=2))  # last: the row is complete
        written.append(metrics)
    return written

