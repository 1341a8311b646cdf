"""THE trainer: one ``fit()`` loop for every algorithm, on ``accelerate``.

The loop only knows the loss's declarations (``batch_kind``, ``needs_reference``, ``model_output``);
it never looks at an algorithm's name. Batches come from a batch source: a dataset
(``zoo.data.batches.DatasetBatches``, offline losses) or an online source that samples from the model being
trained (``zoo.rollout.Experience``, PPO). Per optimizer step:

    batch (collated for loss.batch_kind, or a rollout minibatch)
      -> policy output for loss.model_output (with grad): completion log-probs, SequenceLogps (N, T-1),
         or a scalar head's scores, SequenceScores (N,)
      -> the reference's output (no grad), if the loss needs it
      -> loss(policy, reference) -> LossOutput(loss (B,), metrics[, token_loss (B,)])
      -> objective: the mean of loss, plus token_loss over the window's token count
      -> backward, clip, step (accelerate handles accumulation, devices, mixed precision)

An optimizer step is one accumulation window: ``grad_accum_steps`` micro-batches on each process. The
window's micro-batches are drawn before its first forward, so a token-mean term (``count_tokens``) is
divided by the tokens of the whole window: accumulating two batches of B equals one batch of 2B for
every loss but KTO, whose reference point z0 and mismatched pairs stay per micro-batch (as in TRL).

Logs go to ``log.jsonl`` (``step``, ``loss``, ``lr``, the loss's metrics and the source's per-batch
metrics, averaged over the steps since the last line); checkpoints (``accelerate`` state, the source's
state, the step) go to ``checkpoints/step_N`` and a run restarted in the same directory resumes from
the newest one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, GradientAccumulationPlugin, gather_object
from tqdm.auto import tqdm

from zoo.builders import MODEL_KINDS
from zoo.config import TrainerConfig
from zoo.data.batches import BatchSource, DatasetBatches, StepBatches  # noqa: F401 - fit's sources, for its callers
from zoo.files import append_lines, kill_point
from zoo.losses.base import Loss
from zoo.models import Reference
from zoo.refcache import ReferenceCache


@dataclass
class FitResult:
    """What a finished ``fit`` reports to the run."""

    steps: int
    train_seconds: float
    examples_seen: int
    last_log: dict
    nonfinite_skipped: int = 0  # optimizer steps dropped for a non-finite quantity (trainer.on_nonfinite=skip)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoints/step_N`` directory, if any."""
    done = [p for p in (run_dir / "checkpoints").glob("step_*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def _windows(loader, size: int):
    """Lists of ``size`` consecutive micro-batches: one optimizer step's accumulation window each."""
    window = []
    for batch in loader:
        window.append(batch)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


def _window_tokens(accelerator: Accelerator, loss_fn: Loss, window: list[dict]) -> torch.Tensor | None:
    """The tokens of the loss's token-mean term in a window, summed over its micro-batches and processes."""
    counts = [loss_fn.count_tokens(batch) for batch in window]
    if counts[0] is None:
        return None
    total = torch.stack([torch.as_tensor(c, dtype=torch.float32, device=accelerator.device) for c in counts]).sum()
    return accelerator.reduce(total, reduction="sum") if accelerator.num_processes > 1 else total


def _mean_metrics(window: list[dict[str, float]]) -> dict[str, float]:
    sums, counts = defaultdict(float), defaultdict(int)
    for entry in window:
        for k, v in entry.items():
            sums[k] += v
            counts[k] += 1
    return {k: sums[k] / counts[k] for k in sums}


def _gathered_means(accelerator: Accelerator, metrics: dict[str, torch.Tensor], source_metrics: dict[str, float]
                    ) -> dict[str, float]:
    """Each metric's mean over all its values on all processes: the loss's ``metrics`` (tensors, each value
    counted) and the batch source's per-batch ``source_metrics`` (floats, one value per process: a rollout's
    means over rows that every process has as many of). Processes may report different keys or numbers of
    values (KTO's chosen metrics exist only where a batch has desirable rows, online DPO's label noise only
    where gold does not tie every pair), so (sum, count) pairs are gathered as objects and merged, rather than
    tensors of matching shapes."""
    local = {}
    for name, value in metrics.items():
        flat = value.detach().float().reshape(-1)
        local[name] = (flat.sum().item(), flat.numel())
    local.update((name, (value, 1)) for name, value in source_metrics.items())
    parts = gather_object([local]) if accelerator.num_processes > 1 else [local]
    sums, counts = defaultdict(float), defaultdict(int)
    for part in parts:
        for name, (total, count) in part.items():
            sums[name] += total
            counts[name] += count
    return {name: sums[name] / counts[name] for name in sums if counts[name]}


@dataclass
class Tracking:
    """What the experiment trackers (``trainer.report_to``) record about a run: its name, the group of runs it
    belongs to (a sweep, a comparison) and its hyperparameters (the resolved config, flattened)."""

    run_name: str
    group: str | None
    config: dict

    def init_kwargs(self, run_dir: Path) -> dict:
        """Each tracker's own arguments for the run's name and group (accelerate passes them to its init)."""
        return {"wandb": {"name": self.run_name, "group": self.group, "dir": str(run_dir)},
                "trackio": {"name": self.run_name, "group": self.group},
                "mlflow": {"run_name": self.run_name, **({"tags": {"group": self.group}} if self.group else {})}}


def flat_config(config: dict, prefix: str = "") -> dict:
    """A nested config as one level of ``a.b.c`` keys with scalar values (lists and None as text), as
    TensorBoard's hyperparameters need them."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


@dataclass
class _Training:
    """What ``fit`` prepared: the accelerator, the prepared policy, optimizer and schedule, and the
    trainable parameters (clipped together)."""

    accelerator: Accelerator
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]


def _on_cpu() -> bool:
    """cpu=True on a machine without an accelerator: accelerate reads several CPU processes (torchrun, gloo) as one
    distributed run only when told so (`accelerate launch --cpu` says it); otherwise each would train alone."""
    return not torch.accelerator.is_available()


def process_state() -> PartialState:
    """This process's place among the run's processes (one, or several under torchrun / accelerate launch): the
    same process state ``fit``'s Accelerator joins."""
    return PartialState(cpu=_on_cpu())


def is_main_process() -> bool:
    """Whether this process writes a run's files (the only one, or rank 0 of several)."""
    return process_state().is_main_process


def _prepare(policy: torch.nn.Module, cfg: TrainerConfig, source: BatchSource, reference: Reference | None, seed: int,
             run_dir: Path | None = None) -> _Training:
    """The accelerator (windows are always whole and drawn ahead of their forwards, so the step must not
    follow the data loader's end), AdamW and its schedule (linear warm-up then constant, the DPO paper's),
    all prepared, torch seeded; the reference on the device; a stateful source registered for checkpoints."""
    accumulation = GradientAccumulationPlugin(num_steps=cfg.grad_accum_steps, sync_with_dataloader=False)
    accelerator = Accelerator(gradient_accumulation_plugin=accumulation, mixed_precision=cfg.mixed_precision,
                              cpu=_on_cpu(), log_with=list(cfg.report_to) or None,
                              project_dir=str(run_dir) if run_dir is not None else None)
    _check_engine(accelerator)
    torch.manual_seed(seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = _adamw(params, cfg)
    warmup = max(1, cfg.warmup_steps)
    # accelerate steps a prepared scheduler once per process at every update (it assumes the schedule counts one
    # process's batches), so its count is updates x processes; warmup_steps counts updates
    processes = accelerator.num_processes
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s // processes + 1) / warmup))
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    if reference is not None:
        reference.to(accelerator.device)
    if hasattr(source, "state_dict"):
        accelerator.register_for_checkpointing(source)
    return _Training(accelerator, policy, optimizer, scheduler, params)


def _check_engine(accelerator: Accelerator) -> None:
    """Say what the launch config asked for and did not get, and refuse engines that shard the parameters.

    accelerate runs FSDP and DeepSpeed on GPUs only: on CPU processes it quietly trains plain data-parallel.
    Parameter sharding (FSDP, ZeRO-3) is refused: the main process alone evaluates and saves the policy, and
    the online sources sample on each process on their own, all of which need every parameter in every
    process (ZeRO-2 keeps them whole)."""
    asked = [engine for engine, flag in (("FSDP", "ACCELERATE_USE_FSDP"), ("DeepSpeed", "ACCELERATE_USE_DEEPSPEED"))
             if os.environ.get(flag, "false").lower() == "true"]
    engine = accelerator.distributed_type
    if asked and engine not in (DistributedType.FSDP, DistributedType.DEEPSPEED) and accelerator.is_main_process:
        print(f"[zoo] warning: the launch config asks for {asked[0]}, which accelerate runs on GPUs only; these "
              f"{accelerator.num_processes} CPU process(es) train data-parallel (DDP) instead")
    stage = accelerator.state.deepspeed_plugin.zero_stage if engine == DistributedType.DEEPSPEED else None
    if engine == DistributedType.FSDP or stage == 3:
        raise ValueError(f"{'FSDP' if stage is None else 'DeepSpeed ZeRO-3'} shards the parameters across processes, "
                         f"and zoo evaluates, saves and samples with whole ones on each process: launch with "
                         f"conf/accelerate/ddp.yaml or zero2.yaml (see docs/scaling.md)")


def _adamw(params: list[torch.nn.Parameter], cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW, fused (one kernel over all parameters, on the CPU too) where torch has it for these parameters:
    a step over world-model-sized parameters took 1.8 ms instead of the for-loop version's 15 ms. The same
    update up to float rounding."""
    try:
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without a fused kernel
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)


def _resume(accelerator: Accelerator, run_dir: Path) -> int:
    """Load the newest checkpoint in ``run_dir``, if any; the step to start from."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return 0
    accelerator.load_state(str(checkpoint))
    start_step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    accelerator.print(f"resuming from {checkpoint} at step {start_step}")
    return start_step


def _split_rows(batch: dict, n: int) -> tuple[dict, dict]:
    """A collated batch's first ``n`` sequences and the rest; per-batch entries (``labels``) go with the first."""
    rows = batch["input_ids"].shape[0]
    first, second = {}, {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() and value.shape[0] == rows:
            first[key], second[key] = value[:n], value[n:]
        else:
            first[key] = value
    return first, second


def _policy_forward(forward, model: torch.nn.Module, batch: dict, loss_fn: Loss):
    """The policy's output on a batch: one forward with autograd, or, for a loss that reads the second half of
    the rows only detached (``detached_second_half``: KTO's KL rows), that half without autograd (no graph,
    no backward: a third less compute for KTO), joined back in row order."""
    if not loss_fn.detached_second_half:
        return forward(model, batch)
    first, second = _split_rows(batch, batch["input_ids"].shape[0] // 2)
    graded = forward(model, first)
    with torch.no_grad():
        detached = forward(model, second)
    joined = {f.name: getattr(graded, f.name) for f in dataclasses.fields(graded)}
    for name, value in joined.items():
        other = getattr(detached, name)
        if torch.is_tensor(value) and torch.is_tensor(other) and name != "labels":
            joined[name] = torch.cat([value, other])
    return type(graded)(**joined)


def _reference_output(t: _Training, forward, batch: dict, reference: Reference, cache: ReferenceCache | None):
    """The frozen reference's output on ``batch``: from the cache when a run met this batch before, else
    computed (and stored)."""
    digest = cache.digest(batch) if cache is not None else None
    cached = cache.get(digest, batch) if cache is not None else None
    if cached is not None:
        return cached
    with torch.no_grad(), reference.model(t.accelerator.unwrap_model(t.policy)) as ref_model:
        out = forward(ref_model, batch)
    if cache is not None:
        cache.put(digest, out)
    return out


NONFINITE = ("loss", "reward", "advantage", "value")  # what a micro-step can find non-finite (and the gradient norm)


def _agreed(accelerator: Accelerator, quantity: str | None) -> str | None:
    """The non-finite quantity any process found (the same answer on every process: all skip or all stop, none
    waits in a collective the others left), or None."""
    code = _most_over_processes(accelerator, NONFINITE.index(quantity) + 1 if quantity else 0)
    return NONFINITE[code - 1] if code else None


def _most_over_processes(accelerator: Accelerator, value: int) -> int:
    """The largest of every process's ``value`` (the value itself on one process): a decision all processes share."""
    if accelerator.num_processes == 1:
        return value
    return int(accelerator.reduce(torch.tensor(value, device=accelerator.device), reduction="max"))


def _injected_nan(loss: torch.Tensor, step: int, process: int) -> torch.Tensor:
    """``ZOO_NAN_AT=loss:STEP[:PROCESS]``: the loss of that step (counted from 1) made NaN, on that process only
    (every process when none is named): the non-finite tests' injection; nothing without the variable."""
    spec = os.environ.get("ZOO_NAN_AT", "")
    if not spec:
        return loss
    name, at, *only = spec.split(":")
    hit = name == "loss" and int(at) == step + 1 and (not only or int(only[0]) == process)
    return loss * float("nan") if hit else loss


def _micro_step(t: _Training, loss_fn: Loss, batch: dict, reference: Reference | None, cfg: TrainerConfig,
                window_tokens: torch.Tensor | None, micro: int, step: int, window: dict,
                reference_cache: ReferenceCache | None = None) -> dict[str, float] | None:
    """Forward (the policy with grad, the reference without), the loss, backward and, at the end of a
    window, the clipped update; returns the micro-batch's metrics and its source's, gathered over processes.

    A non-finite loss, gradient norm, or a source's non-finite reward / advantage / value (``batch["nonfinite"]``)
    stops the run (``trainer.on_nonfinite=stop``) or, with ``skip``, drops the whole window: no update, no
    scheduler step, ``window["skipped"]`` names the quantity and the metrics are None. Every process takes
    the same decision and still runs its backward (of a zeroed loss), so DDP's gradient exchange never waits
    for a process that left it."""
    forward = MODEL_KINDS[loss_fn.model_output].forward
    if loss_fn.needs_all_token_logps:
        forward = functools.partial(forward, all_tokens=True)
    with t.accelerator.accumulate(t.policy):
        policy_out = _policy_forward(forward, t.policy, batch, loss_fn)
        reference_out = None
        if loss_fn.needs_reference:
            reference_out = _reference_output(t, forward, batch, reference, reference_cache)
        out = loss_fn(policy_out, reference_out)
        loss = out.objective(window_tokens, micro)  # this micro-batch's share of the window's objective
        loss = _injected_nan(loss, step, t.accelerator.process_index)
        found = batch.get("nonfinite") or (None if torch.isfinite(loss) else "loss")
        found = _agreed(t.accelerator, found)
        if found:
            _nonfinite(cfg, found, step, loss.item() if found == "loss" else None)
            window["skipped"] = window.get("skipped") or found
        t.accelerator.backward(loss * 0.0 if window.get("skipped") else loss)  # zeroed: the window is dropped
        if t.accelerator.sync_gradients:
            norm = t.accelerator.clip_grad_norm_(t.params, cfg.max_grad_norm or float("inf"))
            if not window.get("skipped") and norm is not None and not torch.isfinite(norm):
                _nonfinite(cfg, "gradient norm", step, norm.item())
                window["skipped"] = "gradient norm"
            if window.get("skipped"):
                t.optimizer.zero_grad()  # the window's gradients are dropped: no update, no schedule step
                return None
        t.optimizer.step()  # accelerate makes these no-ops inside a window
        t.scheduler.step()
        t.optimizer.zero_grad()
    if window.get("skipped"):
        return None
    return _gathered_means(t.accelerator, {"loss": loss.detach(), **out.metrics}, batch.get("metrics", {}))


def _nonfinite(cfg: TrainerConfig, quantity: str, step: int, value: float | None) -> None:
    """Stop the run on a non-finite ``quantity`` at ``step`` (0-based), unless ``trainer.on_nonfinite=skip``."""
    if cfg.on_nonfinite == "skip":
        return
    shown = f" ({value})" if value is not None else ""
    raise FloatingPointError(f"non-finite {quantity}{shown} at step {step + 1}; the run stops with its last "
                             f"checkpoint kept (trainer.on_nonfinite=skip drops such batches instead; a lower "
                             f"trainer.learning_rate may avoid them)")


def fit(policy: torch.nn.Module, loss_fn: Loss, source: BatchSource, cfg: TrainerConfig, run_dir: str | Path,
        seed: int = 0, reference: Reference | None = None, desc: str = "train",
        reference_cache: ReferenceCache | None = None, tracking: Tracking | None = None) -> FitResult:
    """Train ``policy`` on the batches of ``source`` with ``loss_fn``; writes log.jsonl and checkpoints in ``run_dir``.

    ``source`` is a :class:`~zoo.data.batches.BatchSource`: a dataset (``DatasetBatches``) or an online
    source; its micro-batches are asked for by number, so a resumed run continues where it stopped.
    ``reference_cache`` (``zoo.refcache``) serves the reference's outputs on batches met before.
    ``tracking``: the run's name, group and config for the trackers of ``cfg.report_to``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if loss_fn.needs_reference and reference is None:
        raise ValueError(f"{type(loss_fn).__name__} needs a reference model; pass reference=")
    if cfg.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"trainer.on_nonfinite must be 'stop' or 'skip', got {cfg.on_nonfinite!r}")
    if cfg.keep_checkpoints < 1:
        raise ValueError(f"trainer.keep_checkpoints must be >= 1 (a resumed run needs one), got {cfg.keep_checkpoints}")
    t = _prepare(policy, cfg, source, reference, seed, run_dir)
    if cfg.report_to:  # the trackers (main process only: accelerate's rule) see what log.jsonl gets
        tracking = tracking or Tracking(run_dir.name, None, {})
        t.accelerator.init_trackers(cfg.tracker_project, config=flat_config(tracking.config),
                                    init_kwargs=tracking.init_kwargs(run_dir))
    start_step = _resume(t.accelerator, run_dir)
    micro = cfg.grad_accum_steps * t.accelerator.num_processes
    loader = source.batches(t.accelerator, t.policy, start_step * micro, cfg.max_steps * micro)
    refresh = source.steps_per_refresh  # checkpoints fall on multiples of it (1 for datasets)
    save_every = -(-cfg.save_every // refresh) * refresh if cfg.save_every else 0

    window: list[dict[str, float]] = []
    skipped, skipped_since_log = 0, 0  # optimizer steps dropped for a non-finite quantity
    last_log: dict = {}
    step, started = start_step, time.perf_counter()
    t.policy.train()
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=desc, disable=not t.accelerator.is_main_process,
               dynamic_ncols=True)
    for micro_batches in _windows(loader, cfg.grad_accum_steps):
        window_tokens = _window_tokens(t.accelerator, loss_fn, micro_batches)
        state: dict = {}  # "skipped": the non-finite quantity that dropped this window
        metrics = [_micro_step(t, loss_fn, batch, reference, cfg, window_tokens, micro, step, state, reference_cache)
                   for batch in micro_batches]
        if not t.accelerator.sync_gradients:
            raise RuntimeError(f"an accumulation window of {len(micro_batches)} micro-batches ended without an "
                               f"optimizer step (trainer.grad_accum_steps={cfg.grad_accum_steps})")
        if state.get("skipped"):
            skipped, skipped_since_log = skipped + 1, skipped_since_log + 1
            if t.accelerator.is_main_process:
                print(f"[zoo] warning: step {step + 1} skipped: non-finite {state['skipped']}", flush=True)
        else:
            window += metrics
        step += 1
        bar.update(1)
        if step == 1 or step % cfg.log_every == 0 or step == cfg.max_steps:  # step 1, every log_every, the last
            last_log = {"step": step, **_mean_metrics(window), "lr": t.scheduler.get_last_lr()[0],
                        "elapsed_s": round(time.perf_counter() - started, 3)}
            if skipped_since_log:
                last_log["nonfinite_skipped"] = skipped_since_log
            window, skipped_since_log = [], 0
            if "loss" in last_log:
                bar.set_postfix(loss=f"{last_log['loss']:.4f}")
            if t.accelerator.is_main_process:
                append_lines(run_dir / "log.jsonl", [json.dumps(last_log)], kill_name="log")
            if cfg.report_to:
                t.accelerator.log({k: v for k, v in last_log.items() if k != "step"}, step=step)
        if save_every and step % save_every == 0 and step < cfg.max_steps:
            save_checkpoint(t.accelerator, run_dir, step, keep=cfg.keep_checkpoints,
                            needs_bytes=checkpoint_bytes(t.accelerator.unwrap_model(t.policy), run_dir))
    bar.close()
    if cfg.report_to:
        t.accelerator.end_training()  # trackers flushed and closed
    t.accelerator.wait_for_everyone()
    return FitResult(steps=step, train_seconds=time.perf_counter() - started,
                     examples_seen=(step - start_step) * cfg.batch_size * micro, last_log=last_log,
                     nonfinite_skipped=skipped)


def checkpoint_bytes(policy: torch.nn.Module, run_dir: Path) -> int:
    """What the next checkpoint will take on disk: the newest one's size, or before the first, the model's
    weights plus AdamW's two moments of its trainable ones."""
    newest = latest_checkpoint(run_dir)
    if newest is not None:
        return sum(f.stat().st_size for f in newest.rglob("*") if f.is_file())
    weights = sum(p.numel() * p.element_size() for p in policy.parameters())
    moments = sum(2 * p.numel() * 4 for p in policy.parameters() if p.requires_grad)
    return weights + moments


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, keep: int = 2, needs_bytes: int = 0) -> bool:
    """Save accelerate state to checkpoints/step_N (written to a temp dir, then renamed: never half a checkpoint),
    keeping the newest ``keep``. With ``needs_bytes``, free disk space is checked first (by the main process,
    for all): without room for it and a margin, the checkpoint is not written, the run says so and goes on
    (the older checkpoints stay); returns whether it was written."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    short = 0
    if needs_bytes and accelerator.is_main_process:
        free = shutil.disk_usage(root).free
        if free < needs_bytes * 1.2 + 64 * 2**20:
            short = 1
            print(f"[zoo] warning: no checkpoint at step {step}: it needs about {needs_bytes / 2**20:.0f} MB and "
                  f"{root} has {free / 2**20:.0f} MB free; training goes on, a crash would resume from the last "
                  f"one written", flush=True)
    if _most_over_processes(accelerator, short):  # the main process's finding, for all
        return False
    tmp, final = root / f".tmp_step_{step}", root / f"step_{step}"
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        kill_point("checkpoint")  # the state saved, not yet marked complete nor renamed into place
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return True
