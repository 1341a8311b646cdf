"""The GPU check (issue 19): bf16 and QLoRA steps of DPO and PPO, zoo next to TRL on the same work.

    python benchmarks/gpu_check.py --out DIR                 # a CUDA machine; ends within --budget-s (420 s)
    python benchmarks/gpu_check.py --out DIR --cpu-smoke     # any machine: tiny shapes, 3 steps, no QLoRA
    python benchmarks/gpu_check.py --prepare-wheels .whl     # here, online: the wheels a bare GPU machine lacks
    bash benchmarks/gpu_check.sh                             # on the GPU machine: install those, run, write $OUT

What runs. Two randomly initialised model shapes, built here with the published architectures (no download,
no weights: with random weights only the shapes and the vocabulary size matter): ``smollm2-135m`` (Llama,
hidden 576, 30 layers, 9 heads / 3 KV heads, vocabulary 49,152, tied embeddings) and ``qwen2.5-0.5b``
(Qwen2, hidden 896, 24 layers, 14 heads / 2 KV heads, vocabulary 151,936, tied embeddings), each with a
byte-level BPE tokenizer built here to fill the model's whole vocabulary (every id decodes to text, so PPO's
samples can be scored; the data are random words that are one token each). Two modes:

- ``bf16``: bf16 weights, full fine-tuning, the reference a separate frozen bf16 copy, bf16 autocast on
  both sides (zoo ``trainer.mixed_precision=bf16``, TRL ``bf16=True``), gradient checkpointing off;
- ``qlora``: the base in 4-bit NF4 (double quantization, bf16 compute: ``zoo.models.quantization_config``,
  which both sides use), LoRA r 8 / alpha 16 / dropout 0 on every linear layer, the reference the base with
  adapters off, gradient checkpointing on on both sides (zoo: peft's ``prepare_model_for_kbit_training``
  turns it on; TRL: its default). They differ in one thing each does its own way: that peft call also
  makes zoo's unquantized weights (embeddings, norms) float32, where TRL 1.16 keeps them bf16 and casts the
  adapters to bf16.

Two jobs per (shape, mode), each run by zoo (``zoo.run.train``, a composed ``zoo train`` config) and by TRL:

- **DPO** vs ``DPOTrainer``: 8 pairs a step, prompt 64 tokens, chosen 192, rejected 128 (+ EOS), β 0.1,
  one pass over (warm-up + timed) x 8 pairs. tokens/s = the real tokens of the policy's sequences
  (2 x prompt + chosen + rejected, each side's own tokenization) per second;
- **PPO** vs ``RLOOTrainer`` (TRL has no PPO): rollouts of 64 completions of up to 64 new tokens at
  temperature 1 from 64-token prompts, 4 optimizer steps of 16 per rollout (one epoch), KL 0.05 to the
  reference, a reward model made of the same random trunk and a random head (bf16, not quantized) on both
  sides. zoo's PPO draws 1 completion per prompt and trains a value model too (the reward model's trunk
  under bf16, a LoRA adapter under QLoRA); RLOO draws 2 per prompt and has no value model. tokens/s = the
  tokens generated per second (completions x their mean length, from each side's logs).

Timing. Each case is a fresh process (clean memory peaks), zoo and TRL alternating which goes first. The
clock starts at the end of the warm-up steps (3 for DPO, one rollout for PPO) and stops at the end of the
last step, the device synchronised at both ends: 20 timed DPO steps, 2 timed rollouts (8 steps) of PPO.
Peak memory is ``torch.cuda.max_memory_allocated`` over the whole training (weights, optimizer state,
activations), reset before it (``zoo.memory``, on both sides). Seeds are fixed (0).

Written into ``--out``, after every case (the machine can be lost): ``gpu_check.json`` (every measurement,
versions, the GPU) and ``gpu_check.md`` (the table), and each case's log under ``logs/``. A case that cannot
run is reported as ``not run: <reason>`` (no bitsandbytes, no TRL, out of ``--budget-s``) and the rest goes
on. Without CUDA the script exits with code 2 unless ``--cpu-smoke`` is given: then every non-QLoRA case
runs on the CPU with 2-layer, hidden-64 versions of both shapes (vocabulary 1,024) and 1 + 2 steps, in this
process, so that the code path is testable (``tests/test_gpu_check.py``); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the child processes import zoo from the checkout, installed or not
    sys.path.insert(0, str(ROOT))

# The published architectures (their config.json), as transformers' config arguments.
SHAPES = {
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                                   max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": 100000.0})),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                                   rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})),
}
# --cpu-smoke: the same two architectures, small enough for a test on two CPU cores
SMOKE_SIZE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=1024, max_position_embeddings=512)
MODES = ("bf16", "qlora")
ALGOS = ("dpo", "ppo")
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")  # ids 0, 1, 2 of byte_level_tokenizer's vocabulary
LORA = dict(r=8, alpha=16, dropout=0.0)  # conf/peft/lora.yaml
LEARNING_RATE, DPO_BETA, KL_COEF, MAX_LENGTH = 1e-5, 0.1, 0.05, 512


@dataclass(frozen=True)
class Workload:
    """What one case does: DPO's pairs and steps, PPO's rollouts (the same on both sides)."""

    pairs_per_step: int = 8
    prompt_tokens: int = 64
    chosen_tokens: int = 192
    rejected_tokens: int = 128
    dpo_warmup_steps: int = 3
    dpo_timed_steps: int = 20
    ppo_batch: int = 16  # completions per optimizer step
    ppo_minibatches: int = 4  # optimizer steps per rollout (one epoch): rollouts of 16 x 4 = 64 completions
    new_tokens: int = 64
    ppo_warmup_rollouts: int = 1
    ppo_timed_rollouts: int = 2
    prompts: int = 256

    def steps(self, algo: str) -> tuple[int, int]:
        """(warm-up steps, timed steps) of ``algo``."""
        if algo == "dpo":
            return self.dpo_warmup_steps, self.dpo_timed_steps
        return self.ppo_warmup_rollouts * self.ppo_minibatches, self.ppo_timed_rollouts * self.ppo_minibatches


SMOKE_WORKLOAD = Workload(pairs_per_step=2, prompt_tokens=8, chosen_tokens=12, rejected_tokens=8, dpo_warmup_steps=1,
                          dpo_timed_steps=2, ppo_batch=2, ppo_minibatches=1, new_tokens=4, ppo_warmup_rollouts=1,
                          ppo_timed_rollouts=2, prompts=16)


@dataclass(frozen=True)
class Case:
    """One measurement: a model shape, a mode, an algorithm, a side."""

    model: str
    mode: str
    algo: str
    side: str

    @property
    def name(self) -> str:
        return f"{self.model}/{self.mode}/{self.algo}/{self.side}"


def plan() -> list[Case]:
    """Every case, most wanted first (bf16 before QLoRA, the small model first), zoo and TRL alternating
    which goes first, so a run cut short by its budget keeps the pairs it finished."""
    cases = []
    for mode in MODES:
        for model in SHAPES:
            for algo in ALGOS:
                sides = ("zoo", "trl") if len(cases) % 4 == 0 else ("trl", "zoo")
                cases += [Case(model, mode, algo, side) for side in sides]
    return cases


def clock() -> float:
    """``time.perf_counter()`` once the GPU has finished the work queued so far."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


# ---------------------------------------------------------------------------------------------
# Inputs: the random models, their tokenizer, the pairs and the prompts (built once, by the parent)
# ---------------------------------------------------------------------------------------------


# Qwen2's pre-tokenizer (transformers' Qwen2Tokenizer, which AutoTokenizer gives every qwen2 model whatever its
# tokenizer.json says): a word with its leading space is one piece, digits split apart
PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                     r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


def byte_level_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer whose vocabulary is the model's, the same under Qwen2's fixed pipeline and as
    saved: the specials, the 256 bytes, then words ``Ġa``, ``Ġb``, ..., ``Ġaa``, ... (a space and lowercase
    letters, every prefix of a word a word too) until the vocabulary is full, each word one merge of its
    prefix and a letter. So " abc" is one token, and every id, sampled or not, decodes to text."""
    from string import ascii_lowercase

    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = list(SPECIAL_TOKENS) + sorted(pre_tokenizers.ByteLevel.alphabet())
    merges, level = [], ["Ġ"]
    while len(vocab) < vocab_size:
        level = [prefix + letter for prefix in level for letter in ascii_lowercase]
        for word in level[:vocab_size - len(vocab)]:
            merges.append((word[:-1], word[-1]))
            vocab.append(word)
    tokenizer = Tokenizer(models.BPE({token: i for i, token in enumerate(vocab)}, merges))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def build_model(name: str, smoke: bool, out: Path) -> dict:
    """A random model of shape ``name`` (bf16 safetensors) with its tokenizer in ``out/policy``, and a reward
    model of the same trunk with a new random head in ``out/reward``; returns what was built."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from zoo.models import load_reward_model

    family, shape = SHAPES[name]
    shape = {**shape, **(SMOKE_SIZE if smoke else {})}
    config = (LlamaConfig if family == "llama" else Qwen2Config)(pad_token_id=0, eos_token_id=1, bos_token_id=None,
                                                                 **shape)
    tokenizer = byte_level_tokenizer(config.vocab_size)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialised where it will run: seconds, not a minute, for 0.5B parameters
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()  # this process only builds; the cases run in their own
    reward = load_reward_model(str(out / "policy"), tokenizer.pad_token_id, "bfloat16")
    reward.save_pretrained(out / "reward")
    tokenizer.save_pretrained(out / "reward")
    return {"family": family, "parameters": parameters, **{k: v for k, v in shape.items() if k != "rope_parameters"}}


def tokenizer_words(model_dir: Path) -> list[str]:
    """The tokenizer's one-token words (" abc": a space and letters), as ``byte_level_tokenizer`` made them."""
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    return [" " + token[1:] for token in vocab if token.startswith("Ġ") and len(token) > 1]


def write_data(out: Path, w: Workload) -> None:
    """``pairs.jsonl`` (one pass of every DPO step) and ``prompts.jsonl`` (PPO's), seeded, of random one-token
    words: a prompt of n words is n tokens, a completion of n words n tokens + EOS, on both sides."""
    vocabulary, rng = tokenizer_words(out / "policy"), random.Random(0)

    def text(n: int) -> str:
        return "".join(rng.choice(vocabulary) for _ in range(n))

    pairs = w.pairs_per_step * sum(w.steps("dpo"))
    rows = [{"prompt": text(w.prompt_tokens), "chosen": text(w.chosen_tokens), "rejected": text(w.rejected_tokens)}
            for _ in range(pairs)]
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = [{"prompt": text(w.prompt_tokens)} for _ in range(w.prompts)]
    (out / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# One case, zoo's side: a composed ``zoo train`` config run by zoo.run.train
# ---------------------------------------------------------------------------------------------


def zoo_overrides(case: Case, inputs: Path, work: Path, w: Workload) -> list[str]:
    """The ``zoo train`` overrides of a case (see the module docstring for what each mode means)."""
    warmup, timed = w.steps(case.algo)
    common = [f"algo={case.algo}", "data=local", f"model.name_or_path={inputs / 'policy'}", "model.dtype=bfloat16",
              "model.attn_implementation=sdpa", f"data.max_length={MAX_LENGTH}", f"trainer.max_steps={warmup + timed}",
              "trainer.warmup_steps=0", "trainer.log_every=1", f"trainer.learning_rate={LEARNING_RATE}",
              "trainer.save_every=0", "trainer.mixed_precision=bf16", "trainer.reference_cache=false",
              "eval.num_prompts=0", f"stages.cache_dir={work / 'cache'}", "seed=0"]
    if case.mode == "qlora":
        common += ["peft=lora", "quant=4bit", f"peft.r={LORA['r']}", f"peft.alpha={LORA['alpha']}",
                   f"peft.dropout={LORA['dropout']}"]
    if case.algo == "dpo":
        return common + [f"data.path={inputs / 'pairs.jsonl'}", f"trainer.batch_size={w.pairs_per_step}",
                         f"algo.loss.beta={DPO_BETA}"]
    # PPO: the reward model is a full bf16 model on both sides; under LoRA zoo's value model is then a fresh
    # adapter on the shared base (value_init=reference), without LoRA a copy of the reward model's trunk (its
    # default). TRL's RLOO gives a completion without EOS no special score, so neither does zoo here.
    return common + [f"data.path={inputs / 'prompts.jsonl'}", f"algo.reward_model={inputs / 'reward'}",
                     f"algo.value_init={'reference' if case.mode == 'qlora' else 'reward'}",
                     f"trainer.batch_size={w.ppo_batch}", f"rollout.num_minibatches={w.ppo_minibatches}",
                     "rollout.ppo_epochs=1", f"rollout.max_new_tokens={w.new_tokens}", f"algo.loss.kl_coef={KL_COEF}",
                     "algo.loss.missing_eos_penalty=null"]


class ClockedSource:
    """A batch source that reads the clock when ``fit`` asks for micro-batch ``mark``: the end of the warm-up
    steps (``fit`` asks for a step's batches after the previous step's update; for PPO the next rollout is
    sampled after the clock is read, inside the timed window)."""

    def __init__(self, source, mark: int):
        self.source, self.mark, self.marked = source, mark, None
        self.steps_per_refresh = source.steps_per_refresh

    def batches(self, accelerator, model, start: int, end: int):
        inner = iter(self.source.batches(accelerator, model, start, end))
        for index in range(start, end):
            if index == self.mark:
                self.marked = clock()
            try:
                batch = next(inner)
            except StopIteration:
                return
            yield batch


def run_zoo(case: Case, inputs: Path, work: Path, w: Workload) -> dict:
    """zoo's side: ``zoo.run.train`` on the composed config, its ``fit`` wrapped to time the steps after the
    warm-up and read the peak memory of the training (the run's own metrics time every step)."""
    from hydra import compose, initialize_config_dir

    from zoo import run
    from zoo.config import register_configs
    from zoo.memory import peak_memory_mb, reset_peak_memory

    warmup, timed = w.steps(case.algo)
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "zoo" / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=zoo_overrides(case, inputs, work, w))
    measured = {}
    original_fit = run.fit

    def timed_fit(policy, loss_fn, source, trainer_cfg, run_dir, **kwargs):
        clocked = ClockedSource(source, warmup * trainer_cfg.grad_accum_steps)
        rss_reset = reset_peak_memory()
        result = original_fit(policy, loss_fn, clocked, trainer_cfg, run_dir, **kwargs)
        measured.update(seconds=clock() - clocked.marked, peak=peak_memory_mb(rss_reset))
        return result

    run.fit = timed_fit
    try:
        run.train(cfg, work / "run")
    finally:
        run.fit = original_fit
    log = [row for row in read_jsonl(work / "run" / "log.jsonl") if row["step"] > warmup]
    out = {"seconds": measured["seconds"], "peak_memory_mb": measured["peak"][0],
           "peak_memory_source": measured["peak"][1], "timed_steps": timed}
    if case.algo == "dpo":
        return {**out, "tokens_per_step": w.pairs_per_step * zoo_tokens_per_pair(inputs)}
    return {**out, "mean_length": sum(row["rollout/length"] for row in log) / len(log)}


def zoo_tokens_per_pair(inputs: Path) -> float:
    """Mean real tokens of a pair's two sequences (prompt twice), tokenized as zoo's DPO run does."""
    from zoo.data.tokenize import tokenize_pair
    from zoo.models import load_tokenizer

    tokenizer = load_tokenizer(str(inputs / "policy"))
    sizes = []
    for row in read_jsonl(inputs / "pairs.jsonl"):
        prompt, chosen, rejected = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        sizes.append(2 * len(prompt) + len(chosen) + len(rejected))
    return sum(sizes) / len(sizes)


# ---------------------------------------------------------------------------------------------
# One case, TRL's side: DPOTrainer / RLOOTrainer loading the same directories
# ---------------------------------------------------------------------------------------------


def step_clock(warmup: int, last: int):
    """A TRL callback that reads the clock at the end of step ``warmup`` and of step ``last``, and keeps the
    logs of the steps between."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def __init__(self):
            self.started = self.ended = None
            self.logs = []

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == warmup:
                self.started = clock()
            if state.global_step == last:
                self.ended = clock()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.global_step > warmup:
                self.logs.append(dict(logs))

    return StepClock()


def trl_settings(case: Case, work: Path, w: Workload) -> dict:
    """The TrainingArguments both TRL trainers get: those of the zoo run, TRL's precision and checkpointing per
    mode, no evaluation, no checkpoints."""
    import torch

    warmup, timed = w.steps(case.algo)
    return dict(
        output_dir=str(work / "trl"), max_steps=warmup + timed, seed=0, learning_rate=LEARNING_RATE,
        per_device_train_batch_size=w.pairs_per_step if case.algo == "dpo" else w.ppo_batch,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, report_to=[], save_strategy="no",
        disable_dropout=True, dataloader_num_workers=0, use_cpu=not torch.cuda.is_available(),
        bf16=True, model_init_kwargs={"dtype": "bfloat16", "attn_implementation": "sdpa"},
        gradient_checkpointing=case.mode == "qlora")


def trl_peft(case: Case) -> dict:
    """The trainer's ``peft_config`` and ``quantization_config`` for a QLoRA case (zoo's quantization settings),
    nothing for bf16."""
    if case.mode != "qlora":
        return {}
    import torch
    from peft import LoraConfig

    from zoo.models import quantization_config

    return {"peft_config": LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                      target_modules="all-linear", task_type="CAUSAL_LM"),
            "quantization_config": quantization_config(4, torch.bfloat16)}


def run_trl(case: Case, inputs: Path, work: Path, w: Workload) -> dict:
    """TRL's side: DPOTrainer or RLOOTrainer on the same model directory, data and settings."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from zoo.memory import peak_memory_mb, reset_peak_memory

    warmup, timed = w.steps(case.algo)
    timer = step_clock(warmup, warmup + timed)
    tokenizer = AutoTokenizer.from_pretrained(inputs / "policy")
    settings = trl_settings(case, work, w)
    if case.algo == "dpo":
        from trl import DPOConfig, DPOTrainer

        trainer = DPOTrainer(model=str(inputs / "policy"), args=DPOConfig(loss_type=["sigmoid"], beta=DPO_BETA,
                                                                          max_length=MAX_LENGTH, **settings),
                             train_dataset=Dataset.from_list(read_jsonl(inputs / "pairs.jsonl")),
                             processing_class=tokenizer, callbacks=[timer], **trl_peft(case))
    else:
        from trl import RLOOConfig, RLOOTrainer

        args = RLOOConfig(num_generations=2, max_completion_length=w.new_tokens, steps_per_generation=w.ppo_minibatches,
                          num_iterations=1, temperature=1.0, top_k=0, top_p=1.0, beta=KL_COEF, **settings)
        trainer = RLOOTrainer(model=str(inputs / "policy"), reward_funcs=str(inputs / "reward"), args=args,
                              train_dataset=Dataset.from_list(read_jsonl(inputs / "prompts.jsonl")),
                              processing_class=tokenizer, callbacks=[timer], **trl_peft(case))
    rss_reset = reset_peak_memory()
    trainer.train()
    peak, source = peak_memory_mb(rss_reset)
    out = {"seconds": timer.ended - timer.started, "peak_memory_mb": peak, "peak_memory_source": source,
           "timed_steps": timed}
    if case.algo == "dpo":
        data = trainer.train_dataset
        sizes = [2 * len(p) + len(c) + len(r) for p, c, r in zip(data["prompt_ids"], data["chosen_ids"],
                                                                  data["rejected_ids"])]
        return {**out, "tokens_per_step": w.pairs_per_step * sum(sizes) / len(sizes)}
    lengths = [log["completions/mean_length"] for log in timer.logs if "completions/mean_length" in log]
    return {**out, "mean_length": sum(lengths) / len(lengths)}


def run_case(case: Case, inputs: Path, work: Path, w: Workload) -> dict:
    """Measure one case; tokens/s as the module docstring defines it."""
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    out = (run_zoo if case.side == "zoo" else run_trl)(case, inputs, work, w)
    if case.algo == "dpo":
        out["tokens_per_s"] = out["tokens_per_step"] * out["timed_steps"] / out["seconds"]
    else:
        completions = out["timed_steps"] * w.ppo_batch
        out["completions_per_s"] = completions / out["seconds"]
        out["tokens_per_s"] = completions * out["mean_length"] / out["seconds"]
    return {**out, "status": "ok", "case_wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------
# The parent: inputs, the plan, one process per case, results written as they come
# ---------------------------------------------------------------------------------------------


def child_main(spec_path: Path) -> int:
    """``--case SPEC``: run the case SPEC (JSON) names and write its result where SPEC says."""
    spec = json.loads(spec_path.read_text())
    case, w = Case(**spec["case"]), Workload(**spec["workload"])
    try:
        result = run_case(case, Path(spec["inputs"]), Path(spec["work"]), w)
    except Exception as err:  # noqa: BLE001 - reported in the results, the parent goes on
        traceback.print_exc()
        result = {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:500]}
    Path(spec["result"]).write_text(json.dumps(result))
    return 0 if result["status"] == "ok" else 1


def run_in_child(case: Case, inputs: Path, work: Path, w: Workload, log: Path, timeout: float) -> dict:
    """Run a case in a fresh process (its own process group, killed whole at ``timeout``)."""
    work.mkdir(parents=True, exist_ok=True)
    spec, result = work / "spec.json", work / "result.json"
    spec.write_text(json.dumps({"case": dataclasses.asdict(case), "workload": dataclasses.asdict(w),
                                "inputs": str(inputs), "work": str(work), "result": str(result)}))
    with log.open("w") as log_file:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--case", str(spec)], cwd=ROOT,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, nothing else
            proc.wait()
            return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    if result.exists():
        return json.loads(result.read_text())
    return {"status": "failed", "reason": f"exit code {proc.returncode}, no result (see {log.name})"}


def run_here(case: Case, inputs: Path, work: Path, w: Workload, log: Path) -> dict:
    """Run a case in this process (--cpu-smoke: a test cannot pay a fresh interpreter per case)."""
    try:
        return run_case(case, inputs, work, w)
    except Exception as err:  # noqa: BLE001 - reported in the results, the parent goes on
        log.write_text(traceback.format_exc())
        return {"status": "failed", "reason": f"{type(err).__name__}: {err}"[:500]}


def problems(smoke: bool) -> dict[str, str]:
    """Why whole groups of cases cannot run here: {"trl": reason, "qlora": reason}, for those that cannot."""
    out = {}
    try:
        import datasets  # noqa: F401
        import trl  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means: no TRL side
        out["trl"] = f"TRL cannot be imported ({type(err).__name__}: {err})"
    if smoke:
        out["qlora"] = "--cpu-smoke runs no QLoRA case"
    else:
        from zoo.models import bitsandbytes_problem

        problem = bitsandbytes_problem(4, "cuda")  # a 4-bit layer's forward and backward on the GPU
        if problem is not None:
            out["qlora"] = f"bitsandbytes cannot run 4-bit layers here ({problem})"
    return out


def environment() -> dict:
    """The machine and the versions the numbers belong to."""
    import importlib.metadata

    import torch

    versions = {}
    for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "bitsandbytes"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "cuda": torch.version.cuda, "python": sys.version.split()[0], "versions": versions}


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown(results: dict) -> str:
    """The table: per (model, mode, algo) both sides' tokens/s and peak memory and the ratios, then why any side
    did not run."""
    rows, env = {}, results["environment"]
    for r in results["cases"]:
        rows.setdefault((r["model"], r["mode"], r["algo"]), {})[r["side"]] = r
    unit = "GPU MB" if results["environment"]["gpu"] else "MB (CPU RSS)"
    lines = [f"| model | mode | job | zoo tokens/s | TRL tokens/s | **TRL time / zoo time** | zoo peak {unit} | "
             f"TRL peak {unit} | TRL / zoo memory |", "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for (model, mode, algo), sides in rows.items():
        zoo_r, trl_r = sides.get("zoo", {}), sides.get("trl", {})
        job = "DPO vs DPOTrainer" if algo == "dpo" else "PPO vs RLOOTrainer"
        z_tps, t_tps = zoo_r.get("tokens_per_s"), trl_r.get("tokens_per_s")
        z_mem, t_mem = zoo_r.get("peak_memory_mb"), trl_r.get("peak_memory_mb")
        speed = f"**{z_tps / t_tps:.2f}**" if z_tps and t_tps else "—"
        memory = f"{t_mem / z_mem:.2f}" if z_mem and t_mem else "—"
        lines.append(f"| {model} | {mode} | {job} | {fmt(z_tps)} | {fmt(t_tps)} | {speed} | {fmt(z_mem)} | "
                     f"{fmt(t_mem)} | {memory} |")
        for side, r in (("zoo", zoo_r), ("TRL", trl_r)):
            if r and r["status"] != "ok":
                notes.append(f"- {model} {mode} {algo}, {side}: {r['status']}: {r.get('reason', '')}")
    head = (f"{env['gpu'] or 'CPU (--cpu-smoke: tiny shapes, the numbers mean nothing)'}, CUDA {env['cuda']}, "
            + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".")
    peak = ("`torch.cuda.max_memory_allocated` over the training" if env["gpu"] else
            "the process's peak RSS (every case in one process: not comparable)")
    legend = ("DPO tokens/s: the policy's real tokens (prompt twice, chosen, rejected) per second; PPO / RLOO: "
              "generated tokens per second. TRL time / zoo time = zoo tokens/s ÷ TRL tokens/s (above 1: zoo is "
              f"faster). Peak: {peak}.")
    return "\n".join([head, "", legend, "", *lines, *([""] + notes if notes else [])]) + "\n"


def write_results(out: Path, results: dict) -> None:
    """gpu_check.json and gpu_check.md, each written whole through a temporary file."""
    for name, text in (("gpu_check.json", json.dumps(results, indent=2)), ("gpu_check.md", markdown(results))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.rename(out / name)


def check(args) -> int:
    """Build the inputs, run the plan within the budget, write and print the results."""
    started = time.monotonic()
    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here. It measures zoo and TRL on a GPU; for a CPU run of the same "
              "code path with tiny shapes, pass --cpu-smoke.", file=sys.stderr)
        return 2
    out = args.out.resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=args.work))
    w = SMOKE_WORKLOAD if smoke else Workload()
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "environment": environment(),
               "workload": dataclasses.asdict(w), "models": {}, "cases": []}
    skip = problems(smoke)
    for reason in skip.values():
        print(f"gpu_check: {reason}", flush=True)
    for name in SHAPES:
        inputs = work / name
        results["models"][name] = build_model(name, smoke, inputs)
        write_data(inputs, w)
    print(f"gpu_check: inputs built in {time.monotonic() - started:.0f} s", flush=True)
    write_results(out, results)

    for index, case in enumerate(plan()):
        if args.only and not any(case.name.startswith(prefix) for prefix in args.only.split(",")):
            continue
        left = args.budget_s - (time.monotonic() - started)
        reason = skip.get("qlora") if case.mode == "qlora" else None
        reason = reason or (skip.get("trl") if case.side == "trl" else None)
        if reason is None and left < args.min_case_s:
            reason = f"out of the {args.budget_s:.0f} s budget"
        case_work, log = work / f"case{index}", out / "logs" / f"{case.name.replace('/', '-')}.log"
        if reason is not None:
            result = {"status": "not run", "reason": reason}
        elif smoke:
            result = run_here(case, work / case.model, case_work, w, log)
        else:
            launched = time.monotonic()
            result = run_in_child(case, work / case.model, case_work, w, log, min(args.case_timeout_s, left))
            result["process_wall_s"] = time.monotonic() - launched
        shutil.rmtree(case_work, ignore_errors=True)  # a full fine-tune's saved model is 1 GB
        results["cases"].append({**dataclasses.asdict(case), **result})
        write_results(out, results)
        shown = (f"{result['tokens_per_s']:,.0f} tokens/s, peak {result['peak_memory_mb']:,.0f} MB"
                 if result["status"] == "ok" else f"{result['status']}: {result.get('reason', '')}")
        print(f"[{time.monotonic() - started:5.0f} s] {case.name}: {shown}", flush=True)

    results["total_s"] = time.monotonic() - started
    write_results(out, results)
    print("\n" + markdown(results), flush=True)
    if not args.keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r["status"] == "failed" for r in results["cases"]) else 0


# ---------------------------------------------------------------------------------------------
# --prepare-wheels: what a bare GPU machine lacks, within the upload limit (run here, online)
# ---------------------------------------------------------------------------------------------

# Pinned for the GPU machine's torch 2.11 / transformers 5.17 / accelerate 1.15 / Python 3.12; none of them is,
# or pulls in, a package that machine has (torch, transformers, numpy, ...): installed with --no-deps.
WHEELS = ["trl==1.16.0", "datasets==5.0.1", "dill==0.4.1", "multiprocess==0.70.19", "hydra-core==1.3.8",
          "omegaconf==2.3.1"]
ANTLR = "antlr4-python3-runtime==4.9.3"  # omegaconf's pin; only a source release: built into a wheel here
BITSANDBYTES = "bitsandbytes==0.50.2"
# bitsandbytes ships one native library per CUDA / ROCm / XPU version (41 MiB in all); the GPU machine's torch
# is built for CUDA 13.0, so the CUDA 13 libraries and the CPU one are kept (about 3 MiB) and the wheel gets a
# build tag that says so
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
BNB_BUILD_TAG = "0cuda13only"
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
            "--platform", "manylinux_2_27_x86_64", "--platform", "manylinux_2_24_x86_64", "--platform",
            "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any"]


def strip_wheel(wheel: Path, keep: tuple[str, ...], build_tag: str, dest: Path) -> Path:
    """A copy of a platform wheel without the native libraries not in ``keep``, its RECORD rewritten (hashes
    and sizes of what is left) and ``build_tag`` in its name and WHEEL file."""
    import base64
    import hashlib
    import zipfile

    name, version, *tags = wheel.stem.split("-")
    target = dest / f"{name}-{version}-{build_tag}-{'-'.join(tags)}.whl"
    with zipfile.ZipFile(wheel) as src:
        files = {i.filename: src.read(i) for i in src.infolist()
                 if not (i.filename.endswith(".so") and Path(i.filename).name not in keep)}
    info = next(f for f in files if f.endswith(".dist-info/WHEEL"))
    files[info] = files[info].rstrip(b"\n") + f"\nBuild: {build_tag}\n".encode()
    record = next(f for f in files if f.endswith(".dist-info/RECORD"))
    lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines.append(f"{path},sha256={digest},{len(data)}" if path != record else f"{path},,")
    files[record] = ("\n".join(lines) + "\n").encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for path, data in files.items():
            dst.writestr(path, data)
    return target


def prepare_wheels(dest: Path) -> int:
    """Download (pip) the pinned wheels into ``dest``, build antlr4's, strip bitsandbytes to CUDA 13."""
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", *PLATFORM, "-d", str(dest), *WHEELS],
                   check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "--no-binary=:all:", "-w", str(dest), ANTLR], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", *PLATFORM, "-d", tmp, BITSANDBYTES],
                       check=True)
        strip_wheel(next(Path(tmp).glob("bitsandbytes-*.whl")), BNB_KEEP, BNB_BUILD_TAG, dest)
    total = 0
    for wheel in sorted(dest.glob("*.whl")):
        total += wheel.stat().st_size
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{total / 2**20:7.2f} MiB  in all")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="where gpu_check.json, gpu_check.md and logs/ go")
    parser.add_argument("--cpu-smoke", action="store_true", help="no GPU: tiny shapes, 3 steps, no QLoRA, in-process")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no case starts after this many seconds")
    parser.add_argument("--case-timeout-s", type=float, default=150.0, help="a case's process is killed after this")
    parser.add_argument("--min-case-s", type=float, default=30.0, help="no case starts with less budget left")
    parser.add_argument("--only", default=None, help="comma-separated case-name prefixes (smollm2-135m/bf16/dpo)")
    parser.add_argument("--work", default=None, help="where models are built (default: the system's temp dir)")
    parser.add_argument("--keep-work", action="store_true", help="keep the models and run directories")
    parser.add_argument("--case", type=Path, default=None, help=argparse.SUPPRESS)  # a child process's case
    parser.add_argument("--prepare-wheels", type=Path, default=None, metavar="DIR",
                        help="download the wheels the GPU machine lacks into DIR (online) and exit")
    args = parser.parse_args()
    if args.case is not None:
        return child_main(args.case)
    if args.prepare_wheels is not None:
        return prepare_wheels(args.prepare_wheels)
    if args.out is None:
        parser.error("--out is required")
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)  # inherited by the cases: nothing is fetched
    if args.cpu_smoke:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: every case on the CPU
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
