"""THE trainer: one ``fit()`` loop for every algorithm, on ``accelerate``.

The loop only knows the loss's declarations (``batch_kind``, ``needs_reference``, ``model_output``);
it never looks at an algorithm's name. Batches come from a batch source: a dataset
(:class:`DatasetBatches`, offline losses) or an online source that samples from the model being
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

import json
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from zoo.config import TrainerConfig
from zoo.losses.base import Loss
from zoo.models import MODEL_OUTPUTS, Reference


class StepBatches(torch.utils.data.Sampler):
    """Index batches for steps ``start..end`` of an endless seeded shuffle, so a resumed run sees the
    same data in the same order as an uninterrupted one (epoch e uses permutation seed + e)."""

    def __init__(self, num_rows: int, batch_size: int, seed: int, start_batch: int, end_batch: int):
        self.num_rows, self.batch_size, self.seed = num_rows, batch_size, seed
        self.start_batch, self.end_batch = start_batch, end_batch

    def __len__(self) -> int:
        return max(0, self.end_batch - self.start_batch)

    def __iter__(self):
        per_epoch = max(1, self.num_rows // self.batch_size)  # drop the ragged tail: fixed batch shape
        for b in range(self.start_batch, self.end_batch):
            epoch, k = divmod(b, per_epoch)
            order = list(range(self.num_rows))
            random.Random(self.seed + epoch).shuffle(order)
            chunk = order[k * self.batch_size:(k + 1) * self.batch_size]
            yield chunk if len(chunk) == self.batch_size else (chunk + order)[: self.batch_size]


class DatasetBatches:
    """Batches of a fixed dataset: ``rows`` collated ``batch_size`` at a time in a seeded order."""

    steps_per_refresh = 1  # any step is a valid checkpoint

    def __init__(self, rows: list[dict], collator, batch_size: int, seed: int = 0):
        self.rows, self.collator, self.batch_size, self.seed = rows, collator, batch_size, seed

    def batches(self, accelerator: Accelerator, model: torch.nn.Module, start: int, end: int):
        """Micro-batches number ``start..end`` of the endless shuffle, on the accelerator's device."""
        sampler = StepBatches(len(self.rows), self.batch_size, self.seed, start, end)
        return accelerator.prepare(DataLoader(self.rows, batch_sampler=sampler, collate_fn=self.collator))


@dataclass
class FitResult:
    """What a finished ``fit`` reports to the run."""

    steps: int
    train_seconds: float
    examples_seen: int
    last_log: dict


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


def _gathered_means(accelerator: Accelerator, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """Each metric's mean over all its values on all processes. Processes may report different keys or
    numbers of values (KTO's chosen metrics exist only where a batch has desirable rows), so (sum, count)
    pairs are gathered as objects and merged, rather than tensors of matching shapes."""
    local = {}
    for name, value in metrics.items():
        flat = value.detach().float().reshape(-1)
        local[name] = (flat.sum().item(), flat.numel())
    parts = accelerator.gather_object([local]) if accelerator.num_processes > 1 else [local]
    sums, counts = defaultdict(float), defaultdict(int)
    for part in parts:
        for name, (total, count) in part.items():
            sums[name] += total
            counts[name] += count
    return {name: sums[name] / counts[name] for name in sums if counts[name]}


@dataclass
class _Training:
    """What ``fit`` prepared: the accelerator, the prepared policy, optimizer and schedule, and the
    trainable parameters (clipped together)."""

    accelerator: Accelerator
    policy: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]


def _prepare(policy: torch.nn.Module, cfg: TrainerConfig, source, reference: Reference | None, seed: int
             ) -> _Training:
    """The accelerator (windows are always whole and drawn ahead of their forwards, so the step must not
    follow the data loader's end), AdamW and its schedule (linear warm-up then constant, the DPO paper's),
    all prepared, torch seeded; the reference on the device; a stateful source registered for checkpoints."""
    accumulation = GradientAccumulationPlugin(num_steps=cfg.grad_accum_steps, sync_with_dataloader=False)
    accelerator = Accelerator(gradient_accumulation_plugin=accumulation, mixed_precision=cfg.mixed_precision)
    torch.manual_seed(seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    policy, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    if reference is not None:
        reference.to(accelerator.device)
    if hasattr(source, "state_dict"):
        accelerator.register_for_checkpointing(source)
    return _Training(accelerator, policy, optimizer, scheduler, params)


def _resume(accelerator: Accelerator, run_dir: Path) -> int:
    """Load the newest checkpoint in ``run_dir``, if any; the step to start from."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return 0
    accelerator.load_state(str(checkpoint))
    start_step = json.loads((checkpoint / "trainer_state.json").read_text())["step"]
    accelerator.print(f"resuming from {checkpoint} at step {start_step}")
    return start_step


def _micro_step(t: _Training, loss_fn: Loss, batch: dict, reference: Reference | None, cfg: TrainerConfig,
                window_tokens: torch.Tensor | None, micro: int, step: int) -> dict[str, float]:
    """Forward (the policy with grad, the reference without), the loss, backward and, at the end of a
    window, the clipped update; returns the micro-batch's metrics, gathered over processes."""
    forward = MODEL_OUTPUTS[loss_fn.model_output]
    with t.accelerator.accumulate(t.policy):
        policy_out = forward(t.policy, batch)
        reference_out = None
        if loss_fn.needs_reference:
            with torch.no_grad(), reference.model(t.accelerator.unwrap_model(t.policy)) as ref_model:
                reference_out = forward(ref_model, batch)
        out = loss_fn(policy_out, reference_out)
        loss = out.objective(window_tokens, micro)  # this micro-batch's share of the window's objective
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()} at step {step + 1}; lower trainer.learning_rate")
        t.accelerator.backward(loss)
        if t.accelerator.sync_gradients and cfg.max_grad_norm:
            t.accelerator.clip_grad_norm_(t.params, cfg.max_grad_norm)
        t.optimizer.step()  # accelerate makes these no-ops inside a window
        t.scheduler.step()
        t.optimizer.zero_grad()
    return {**_gathered_means(t.accelerator, {"loss": loss.detach(), **out.metrics}), **batch.get("metrics", {})}


def fit(policy: torch.nn.Module, loss_fn: Loss, source, cfg: TrainerConfig, run_dir: str | Path,
        seed: int = 0, reference: Reference | None = None, desc: str = "train") -> FitResult:
    """Train ``policy`` on the batches of ``source`` with ``loss_fn``; writes log.jsonl and checkpoints in ``run_dir``.

    ``source`` is a :class:`DatasetBatches` or an online source with the same two members:
    ``batches(accelerator, model, start, end)`` (micro-batches ``start..end``, resumable) and
    ``steps_per_refresh`` (checkpoints fall on multiples of it: an online source cannot rebuild a
    half-used rollout batch). A source with ``state_dict`` is checkpointed with the model.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if loss_fn.needs_reference and reference is None:
        raise ValueError(f"{type(loss_fn).__name__} needs a reference model; pass reference=")
    t = _prepare(policy, cfg, source, reference, seed)
    start_step = _resume(t.accelerator, run_dir)
    micro = cfg.grad_accum_steps * t.accelerator.num_processes
    loader = source.batches(t.accelerator, t.policy, start_step * micro, cfg.max_steps * micro)
    refresh = source.steps_per_refresh  # checkpoints fall on multiples of it (1 for datasets)
    save_every = -(-cfg.save_every // refresh) * refresh if cfg.save_every else 0

    window: list[dict[str, float]] = []
    last_log: dict = {}
    step, started = start_step, time.perf_counter()
    t.policy.train()
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=desc, disable=not t.accelerator.is_main_process,
               dynamic_ncols=True)
    for micro_batches in _windows(loader, cfg.grad_accum_steps):
        window_tokens = _window_tokens(t.accelerator, loss_fn, micro_batches)
        window += [_micro_step(t, loss_fn, batch, reference, cfg, window_tokens, micro, step) for batch in micro_batches]
        if not t.accelerator.sync_gradients:
            raise RuntimeError(f"an accumulation window of {len(micro_batches)} micro-batches ended without an "
                               f"optimizer step (trainer.grad_accum_steps={cfg.grad_accum_steps})")
        step += 1
        bar.update(1)
        if step == 1 or step % cfg.log_every == 0 or step == cfg.max_steps:  # step 1, every log_every, the last
            last_log = {"step": step, **_mean_metrics(window), "lr": t.scheduler.get_last_lr()[0],
                        "elapsed_s": round(time.perf_counter() - started, 3)}
            window = []
            bar.set_postfix(loss=f"{last_log['loss']:.4f}")
            if t.accelerator.is_main_process:
                with (run_dir / "log.jsonl").open("a") as f:
                    f.write(json.dumps(last_log) + "\n")
        if save_every and step % save_every == 0 and step < cfg.max_steps:
            save_checkpoint(t.accelerator, run_dir, step)
    bar.close()
    t.accelerator.wait_for_everyone()
    return FitResult(steps=step, train_seconds=time.perf_counter() - started,
                     examples_seen=(step - start_step) * cfg.batch_size * micro, last_log=last_log)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, keep: int = 2) -> None:
    """Save accelerate state to checkpoints/step_N (written to a temp dir, then renamed: never half a checkpoint)."""
    root = run_dir / "checkpoints"
    tmp, final = root / f".tmp_step_{step}", root / f"step_{step}"
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step}))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in sorted(root.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
