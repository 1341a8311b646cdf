"""How well an LM judge labels the reviews task: pairwise vs pointwise, on held-out pairs, against gold.

    python benchmarks/judge_agreement.py                          # SmolLM2-135M-Instruct, 240 pairs
    python benchmarks/judge_agreement.py --pairs 400 --out results/judge_agreement.json

The pairs are two reference samples for each of the first ``--pairs`` held-out evaluation prompts of
``data=reviews`` (``zoo/reviews/assets/eval_prompts.jsonl``: no training prompt among them), sampled
through the preference stage's own code and cached like it. Both of the feedback config's modes label
them (``feedback.source.mode=pairwise`` and ``pointwise``), and each is measured against the gold reward
(VADER):

- agreement: the fraction of pairs whose gold rewards differ where the judge prefers the gold winner,
  over all of them and over those whose gold rewards differ by at least ``--gap`` (clear pairs);
- position bias (pairwise only): mean P(A) over both orders minus 1/2;
- calibration: the pairs are split in two halves by index parity. On the first half the logistic's
  ``scale`` is fitted by maximum likelihood of "gold prefers first" (for pointwise, on the log-odds
  difference; for pairwise, on the logit of the order-averaged P); on the second half, with that scale,
  the log loss, the Brier score and the expected calibration error over 5 equal-width bins of P
  (mean |P - observed frequency|, weighted by bin size) are reported. A judge whose raw probabilities are
  already calibrated fits a scale near 1.

It prints one row per mode and writes all numbers as JSON. Nothing is estimated or copied in.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def fit_scale(diffs: list[float], outcomes: list[bool]) -> float:
    """argmax_a sum log sigmoid(+-a * d): 1-D logistic regression through the origin (Newton's method)."""
    a = 1.0
    for _ in range(50):
        grad = hess = 0.0
        for d, y in zip(diffs, outcomes):
            p = sigmoid(a * d)
            grad += (float(y) - p) * d
            hess += p * (1 - p) * d * d
        if hess <= 1e-12:
            break
        step = grad / hess
        a = max(1e-4, a + step)
        if abs(step) < 1e-8:
            break
    return a


def calibration(probs: list[float], outcomes: list[bool], bins: int = 5) -> dict:
    """Log loss, Brier score and expected calibration error of ``probs`` for ``outcomes``."""
    eps = 1e-6
    n = len(probs)
    log_loss = -sum(math.log(max(eps, p if y else 1 - p)) for p, y in zip(probs, outcomes)) / n
    brier = sum((p - float(y)) ** 2 for p, y in zip(probs, outcomes)) / n
    ece = 0.0
    for b in range(bins):
        inside = [(p, y) for p, y in zip(probs, outcomes) if b / bins <= p < (b + 1) / bins or (b == bins - 1 and p == 1)]
        if inside:
            ece += len(inside) / n * abs(sum(p for p, _ in inside) / len(inside) - sum(y for _, y in inside) / len(inside))
    return {"log_loss": log_loss, "brier": brier, "ece": ece, "n": n}


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, x))))


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--feedback", default="smollm2_judge", help="the feedback config (an LMJudge)")
    parser.add_argument("--pairs", type=int, default=240, help="held-out prompts, one pair each")
    parser.add_argument("--pairwise-principle", default="Which of the two movie reviews is more positive?",
                        help="the question of the pairwise mode (the config's principle is the pointwise one)")
    parser.add_argument("--gap", type=float, default=0.3, help="gold difference of a clear pair")
    parser.add_argument("--out", type=Path, default=None, help="write the numbers here as JSON")
    parser.add_argument("overrides", nargs="*", help="more zoo train overrides (e.g. model=..., feedback.source.principle=...)")
    args = parser.parse_args()

    from hydra.utils import instantiate

    from zoo.config import compose_train_config
    from zoo.stages import _reference, read_unlabelled, samples_stage
    from zoo.world.gold import gold_reward

    cfg = compose_train_config(["data=reviews", "model=smollm2_135m", f"feedback={args.feedback}",
                                f"stages.preferences.num_prompts={args.pairs}", *args.overrides])
    started = time.perf_counter()
    pairs = read_unlabelled(samples_stage(cfg, _reference(cfg).path, Path(cfg.data.eval_path)).path)
    sampled_s = time.perf_counter() - started
    prompts, first, second = [r["prompt"] for r in pairs], [r["first"] for r in pairs], [r["second"] for r in pairs]
    gold_first, gold_second = gold_reward(first), gold_reward(second)
    decided = [i for i in range(len(pairs)) if gold_first[i] != gold_second[i]]
    outcome = {i: gold_first[i] > gold_second[i] for i in decided}
    clear = [i for i in decided if abs(gold_first[i] - gold_second[i]) >= args.gap]
    fit_half, test_half = decided[0::2], decided[1::2]

    results = {"feedback": args.feedback, "pairwise_principle": args.pairwise_principle,
               "pointwise_principle": cfg.feedback.source.principle, "judge": str(cfg.feedback.source.model), "pairs": len(pairs),
               "decided_pairs": len(decided), "clear_pairs": len(clear), "gap": args.gap,
               "sampling_seconds": round(sampled_s, 1), "modes": {}}
    for mode in ("pairwise", "pointwise"):
        source = {**{k: v for k, v in cfg.feedback.source.items()}, "mode": mode, "cache_dir": None, "scale": 1.0}
        if mode == "pairwise":
            source["principle"] = args.pairwise_principle
        judge = instantiate(source)
        started = time.perf_counter()
        if mode == "pairwise":
            judged = judge.judge(prompts, first, second)
            prob = judged.prob_first
            diff = [logit(p) for p in prob]  # the order-averaged P's own logit, rescaled below
            bias = judged.position_bias
        else:
            s1, s2 = judge.pointwise_scores(prompts, first), judge.pointwise_scores(prompts, second)
            diff = [a - b for a, b in zip(s1, s2)]
            bias = None
        seconds = time.perf_counter() - started
        agree = lambda rows: sum((diff[i] > 0) == outcome[i] for i in rows) / len(rows) if rows else float("nan")
        scale = fit_scale([diff[i] for i in fit_half], [outcome[i] for i in fit_half])
        calibrated = [sigmoid(scale * diff[i]) for i in test_half]
        raw = [sigmoid(diff[i]) for i in test_half]
        results["modes"][mode] = {
            "agreement_with_gold": agree(decided), "agreement_clear_pairs": agree(clear), "position_bias": bias,
            "ties": sum(d == 0 for d in diff), "fitted_scale": scale,
            "calibration_fitted_scale": calibration(calibrated, [outcome[i] for i in test_half]),
            "calibration_scale_1": calibration(raw, [outcome[i] for i in test_half]),
            "judge_seconds": round(seconds, 1)}

    print(f"judge {results['judge']} on {len(pairs)} held-out pairs of data=reviews ({len(decided)} decided by gold, "
          f"{len(clear)} with |gold difference| >= {args.gap})")
    print(f"{'mode':<10} {'agree':>6} {'clear':>6} {'bias':>7} {'scale':>7} {'ECE':>6} {'logloss':>8} {'ECE@1':>6} {'s':>6}")
    for mode, m in results["modes"].items():
        bias = "-" if m["position_bias"] is None else f"{m['position_bias']:+.3f}"
        print(f"{mode:<10} {m['agreement_with_gold']:6.3f} {m['agreement_clear_pairs']:6.3f} {bias:>7} "
              f"{m['fitted_scale']:7.3f} {m['calibration_fitted_scale']['ece']:6.3f} "
              f"{m['calibration_fitted_scale']['log_loss']:8.3f} {m['calibration_scale_1']['ece']:6.3f} {m['judge_seconds']:6.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
