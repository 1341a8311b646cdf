"""The frozen reference's log-probs, cached on disk per batch and reused by every run that meets the batch
again (``trainer.reference_cache``).

An offline loss (DPO, IPO, KTO) runs the frozen reference on every batch, about a fifth of a DPO step and
a third of a KTO step. The runs of a sweep meet the same batches again: the same data, seed and batch size
give the same batches in the same order (``zoo.data.batches.StepBatches``), so DPO and IPO of one seed, a
rerun, or a benchmark's repetitions all ask the reference the same questions. Each batch's reference
output is stored under a key of everything it depends on, and read instead of computed.

**The key cannot go stale.** It is the digest of the batch's own tensors (the token ids, masks and any
labels, hence the tokenization, truncation and batch composition: KTO's KL rows, which pair each prompt
with another row's completion, are part of the batch and so of the key), inside a directory keyed by the
reference's weights (a stage's key, or the digest of the model directory), its dtype, attention
implementation, quantization and LoRA wrapping, the device type, and ``CACHE_VERSION`` (bumped whenever
the log-prob forward changes its float rounding). A cached output is the very tensor the first run
computed for that batch, so a run gives the same numbers with the cache cold or warm (TRL's
``precompute_ref_log_probs`` recomputes per run).

Online sources (PPO's rollouts, online DPO's pairs) never repeat a batch and do not use it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from zoo.losses.base import SequenceLogps

# Bump when the log-prob forward (zoo.models.token_logps and what it calls) changes its numbers.
# 2: log-probs as minus a fused cross-entropy, read from the packed rows (float rounding moved, ~1e-5 nats)
# 3: a prompt shared by several rows computed once (zoo.models._packed_trunk: float rounding moved)
CACHE_VERSION = 3


def model_identity(path: str) -> str:
    """A model's identity for a cache key: the key of the stage that built it (``stage.json`` beside a
    stage's ``model/``: cheap), else the digest of its directory, else its hub id."""
    from zoo.stages import identity

    stage = Path(path).parent / "stage.json"
    key = json.loads(stage.read_text()).get("key") if stage.exists() else None
    return f"stage:{key}" if key else identity(path)


def reference_setting(cfg, reference) -> dict:
    """What the frozen ``reference`` (a ``zoo.models.Reference``) computes with besides its input: its
    weights' identity, dtype, attention implementation, quantization, LoRA wrapping and the device. Both
    caches' keys start from it."""
    m = cfg.model
    return {"reference": reference.identity, "dtype": m.dtype, "attn_implementation": m.get("attn_implementation"),
            "quant_bits": cfg.quant.bits, "lora_base": bool(cfg.peft.enabled),
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def _replace_atomically(path: Path, write) -> None:
    """``write(tmp)`` to a temp file beside ``path``, then rename it over ``path``: a reader never sees half an
    entry, and concurrent writers of one key (same bytes) each rename a whole file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    tmp.replace(path)


def _setting_digest(setting: dict, length: int) -> str:
    blob = json.dumps({**setting, "version": CACHE_VERSION}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


class ReferenceCache:
    """Reference outputs (``SequenceLogps``) on disk under ``root/<setting key>/<batch digest>.safetensors``;
    the trainer takes a batch's ``digest`` once and reads (``get``) or writes (``put``) under it."""

    def __init__(self, root: str | Path, setting: dict):
        self.dir = Path(root) / ("reference-logps-" + _setting_digest(setting, 16))
        self.hits = self.misses = 0

    @staticmethod
    def digest(batch: dict) -> str:
        """The digest of a collated batch's tensors (names, dtypes, shapes and bytes), the metrics aside."""
        h = hashlib.sha256()
        for name in sorted(batch):
            value = batch[name]
            if torch.is_tensor(value):
                t = value.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.numpy().tobytes())
        return h.hexdigest()

    def get(self, digest: str, batch: dict) -> SequenceLogps | None:
        """The stored output for the batch of this ``digest``, on the batch's device, or None."""
        path = self.dir / f"{digest}.safetensors"
        if not path.exists():
            self.misses += 1
            return None
        stored = load_file(str(path), device=str(batch["input_ids"].device))
        self.hits += 1
        return SequenceLogps(**stored, labels=batch.get("labels"))

    def put(self, digest: str, out: SequenceLogps) -> None:
        """Store ``out`` for the batch of this ``digest`` (written to a temp file and renamed: never half an entry)."""
        tensors = {f.name: getattr(out, f.name).detach().contiguous().cpu() for f in fields(out)
                   if f.name != "labels" and getattr(out, f.name) is not None}
        self.dir.mkdir(parents=True, exist_ok=True)
        _replace_atomically(self.dir / f"{digest}.safetensors", lambda tmp: save_file(tensors, str(tmp)))

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses}


class ReferenceSamplesCache:
    """The evaluation's reference side, cached on disk: the reference's samples for the eval prompts and their
    log-probs under it. Every run of a comparison with the same seed evaluates against the same reference
    samples (same reference, prompts, seed, sampling settings), so the first run draws them and the others
    read them. The key holds everything the samples depend on; they are the very samples the first run
    drew, so a run's metrics are the same with the cache cold or warm."""

    def __init__(self, root: str | Path, setting: dict):
        self.path = Path(root) / "eval-reference" / f"{_setting_digest(setting, 24)}.json"

    def load(self):
        """(Samples, log-probs (N,), lengths (N,)) or None."""
        from zoo.rollout import Samples

        if not self.path.exists():
            return None
        stored = json.loads(self.path.read_text())
        samples = Samples(stored["prompts"], stored["prompt_ids"], stored["completion_ids"], stored["texts"],
                          stored["ended"])
        return samples, torch.tensor(stored["logps"]), torch.tensor(stored["lengths"])

    def save(self, samples, logps: torch.Tensor, lengths: torch.Tensor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        blob = json.dumps({"prompts": samples.prompts, "prompt_ids": samples.prompt_ids,
                           "completion_ids": samples.completion_ids, "texts": samples.texts, "ended": samples.ended,
                           "logps": logps.tolist(), "lengths": lengths.tolist()})
        _replace_atomically(self.path, lambda tmp: tmp.write_text(blob))
