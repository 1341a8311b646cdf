"""Building the policy and its frozen reference from the model, peft and quant configs.

Safe defaults: weights load from safetensors only and ``trust_remote_code`` is off unless the model
config turns it on. Under LoRA the reference is the policy's own base with the adapters disabled
(``peft``'s ``disable_adapter()``), so no second copy of the weights is held in memory; without LoRA
it is a separate frozen copy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from zoo.files import files_digest, locked, write_atomically
from zoo.losses.base import SequenceLogps, SequenceScores

# bitsandbytes 0.50 on a CPU with AVX-512 BF16 tries, when imported (peft imports it), to fetch a faster 4-bit
# kernel from the hub's kernels-community and logs a warning when it cannot; its own CPU kernel is used
# then, which is what zoo measured and uses. Offline that warning is every run's first line: silenced.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hub_ref(name_or_path: str) -> tuple[str, dict]:
    """(id or path, {"revision": ...}) of a model reference: ``ORG/NAME@REVISION`` pins a hub repository's
    commit, branch or tag (e.g. ``trl-lib/pythia-1b-deduped-tldr-rm@refs/pr/1``, the branch with its
    safetensors weights); a local path, or an id without ``@``, is passed on as it is."""
    name = str(name_or_path)
    if "@" in name and not Path(name).exists():
        repo, revision = name.split("@", 1)
        # a hub id is NAME or ORG/NAME; a revision has no "/" unless it is a ref (refs/pr/1). Anything else is
        # a path that does not exist (outputs/run@3/model), left for from_pretrained to report as one
        looks_like_hub = repo.count("/") <= 1 and not repo.startswith(("/", ".", "~")) and repo
        if looks_like_hub and ("/" not in revision or revision.startswith("refs/")):
            return repo, {"revision": revision}
    return name, {}


DIGESTS_ENV = "ZOO_DIGESTS"  # where hub models' recorded digests live (default ~/.cache/zoo/hub-digests.json)


def checked_hub_ref(name_or_path: str, trust_remote_code: bool = False, weights: bool = True) -> tuple[str, dict]:
    """``hub_ref`` of a model about to be loaded, after the supply-chain checks: a warning when
    ``trust_remote_code`` is on (the repository's Python code will run in this process), and for a hub model
    (not a local directory), its safetensors checked against the digest recorded the first time this
    repository's commit was loaded (``verify_hub_weights``)."""
    repo, revision = hub_ref(name_or_path)
    if trust_remote_code:
        _warn_remote_code(str(name_or_path))
    if weights and not Path(repo).exists():
        verify_hub_weights(repo, revision.get("revision"))
    return repo, revision


@functools.lru_cache(maxsize=None)
def _warn_remote_code(name: str) -> None:
    print(f"[zoo] warning: trust_remote_code is on for {name}: Python code from its repository runs in this "
          f"process (set model.trust_remote_code=false unless you have read it)", flush=True)


@functools.lru_cache(maxsize=None)
def verify_hub_weights(repo: str, revision: str | None = None) -> str:
    """sha256 of a hub model's safetensors files (in name order, with their names), checked before loading
    against the digest recorded for the same repository and commit; the first load records it (trust on first
    use, in ``$ZOO_DIGESTS``). Files that changed under the same commit (a tampered or corrupted cache) are
    refused. Returns the digest ("" where the snapshot has no safetensors: loading then fails on its own)."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(repo, revision=revision, allow_patterns=["*.safetensors", "*.json"]))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return ""
    digest, key = files_digest(files), f"{repo}@{folder.name}"  # the snapshot folder is named by its commit
    ledger = Path(os.environ.get(DIGESTS_ENV) or Path.home() / ".cache" / "zoo" / "hub-digests.json")
    with locked(ledger):
        recorded = json.loads(ledger.read_text()) if ledger.exists() else {}
        if key in recorded and recorded[key] != digest:
            raise ValueError(f"{repo} at commit {folder.name}: its weights' sha256 is {digest}, but {recorded[key]} "
                             f"was recorded when it was first loaded ({ledger}); the files in the hub cache changed "
                             f"under the same commit. Refusing them: delete that snapshot to download it again")
        if key not in recorded:
            recorded[key] = digest
            write_atomically(ledger, json.dumps(recorded, indent=2, sort_keys=True))
            print(f"[zoo] recorded {repo}@{folder.name[:12]}'s weights sha256 {digest[:16]}... in {ledger}")
    return digest


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, pad_token: str | None = None,
                   eos_token: str | None = None, chat_template: str | None = None):
    """The tokenizer, with a PAD token, set up as a model config asks (``model_tokenizer``).

    - ``pad_token``: a token of the vocabulary to pad with (Llama 3's ``<|finetune_right_pad_id|>``,
      Pythia's ``<|padding|>``); null keeps the tokenizer's own, or falls back to EOS where it has none.
    - ``eos_token``: the token that ends a reply when it is not the tokenizer's EOS (a base model trained
      with its family's chat template: ``<|im_end|>``); sampling stops there.
    - ``chat_template``: one of ``zoo.chat_templates``'s names; null keeps the tokenizer's own.

    Tokens are never added: a new token would need a new, untrained embedding row, so a name that is not
    in the vocabulary is an error. The settings are saved with the tokenizer (a stage's or a run's
    ``model/``), so a tokenizer loaded back from there needs none of them again."""
    repo, revision = checked_hub_ref(name_or_path, trust_remote_code, weights=False)
    tokenizer = AutoTokenizer.from_pretrained(repo, trust_remote_code=trust_remote_code, **revision)
    if chat_template is not None:
        from zoo.chat_templates import chat_template as named_template

        tokenizer.chat_template, end_of_turn = named_template(chat_template)
        if end_of_turn is not None and (eos_token or tokenizer.eos_token) != end_of_turn:
            raise ValueError(f"model.chat_template={chat_template} ends a reply with {end_of_turn}, but the EOS would be "
                             f"{eos_token or tokenizer.eos_token}: set model.eos_token={end_of_turn}")
    for role, token in (("eos", eos_token), ("pad", pad_token)):
        if token is None:
            continue
        if token not in tokenizer.get_vocab():
            raise ValueError(f"model.{role}_token={token!r} is not in the vocabulary of {name_or_path}'s tokenizer "
                             f"(zoo never adds tokens: a new one would have an untrained embedding)")
        setattr(tokenizer, f"{role}_token", token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_tokenizer(model_cfg, name_or_path: str | None = None):
    """The tokenizer of ``name_or_path`` (default: the model config's own) with the model config's PAD, EOS
    and chat template: every place that tokenizes for the policy, its reference or its stages loads it so."""
    m = model_cfg
    return load_tokenizer(str(name_or_path or m.name_or_path), m.trust_remote_code, m.get("pad_token"),
                          m.get("eos_token"), m.get("chat_template"))


def tokenizer_settings(model_cfg) -> dict:
    """The model config's tokenizer settings that are set, for a stage's cache key (empty when none are, so
    keys of configs without them stay what they were)."""
    return {k: model_cfg.get(k) for k in ("pad_token", "eos_token", "chat_template") if model_cfg.get(k) is not None}


@functools.lru_cache(maxsize=None)
def bitsandbytes_problem(bits: int, device: str) -> str | None:
    """Why bitsandbytes cannot run ``bits``-bit layers on ``device`` here, or None when it can: a one-layer
    forward and backward, tried once per process (bitsandbytes 0.50 runs NF4 and int8 on the CPU too)."""
    try:
        import bitsandbytes as bnb

        layer = (bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4") if bits == 4
                 else bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)).to(device)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        layer(x).sum().backward()
    except Exception as err:  # noqa: BLE001 - any failure means: not on this device
        return f"{type(err).__name__}: {err}".strip()[:300]
    return None


def quantization_config(bits: int | None, compute_dtype: torch.dtype):
    """A bitsandbytes config for 4- or 8-bit loading (QLoRA = peft=lora quant=4bit), on a CUDA GPU or on the
    CPU where the installed bitsandbytes runs there; otherwise a clear error."""
    if bits is None:
        return None
    if bits not in (4, 8):
        raise ValueError(f"quant.bits must be 4, 8 or null, got {bits}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    problem = bitsandbytes_problem(bits, device)
    if problem is not None:
        raise RuntimeError(f"quant={bits}bit: bitsandbytes cannot run {bits}-bit layers on this machine's {device} "
                           f"({problem}); use quant=none")
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    return BitsAndBytesConfig(load_in_8bit=True)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off: log-prob ratios between policy and reference must be deterministic (as TRL does)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def load_causal_lm(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   quant_bits: int | None = None, attn_implementation: str | None = None) -> nn.Module:
    """A causal LM from safetensors weights; ``attn_implementation`` (sdpa, eager, flash_attention_2) is
    transformers' own, None its default."""
    torch_dtype = DTYPES[dtype]
    repo, revision = checked_hub_ref(name_or_path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        repo, **revision, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
        quantization_config=quantization_config(quant_bits, torch_dtype), attn_implementation=attn_implementation,
    )
    model.config.name_or_path = str(name_or_path)  # with its @revision: what peft records as a LoRA's base
    disable_dropout(model)
    return model


def load_reward_model(name_or_path: str, pad_token_id: int, dtype: str = "float32", trust_remote_code: bool = False,
                      quant_bits: int | None = None, attn_implementation: str | None = None) -> nn.Module:
    """A scalar-head model (``num_labels=1``) initialised from a causal LM: the trunk is the LM's, the
    head is new. Transformers' sequence-classification models read the head at the last non-pad token,
    so ``pad_token_id`` must be set (and differ from EOS, or the EOS itself would count as padding)."""
    torch_dtype = DTYPES[dtype]
    repo, revision = checked_hub_ref(name_or_path, trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        repo, **revision, num_labels=1, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
        quantization_config=quantization_config(quant_bits, torch_dtype), pad_token_id=pad_token_id,
        attn_implementation=attn_implementation,
    )
    disable_dropout(model)
    return model


def _lora_targets(target_modules: list[str] | str) -> list[str] | str:
    """peft's ``target_modules``: a plain list (Hydra gives a ListConfig) or a string such as "all-linear"."""
    return list(target_modules) if not isinstance(target_modules, str) else target_modules


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | str,
               quantized: bool = False, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters; only the adapters (and, for SEQ_CLS, the head) train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=_lora_targets(target_modules),
                        task_type=task_type)
    return get_peft_model(model, config)


class Reference:
    """The frozen reference policy: a separate frozen model, or the LoRA policy with adapters off."""

    def __init__(self, policy: nn.Module, separate: nn.Module | None, source: str | None = None):
        self.policy = policy
        self.separate = separate
        self.source = source  # the reference's weights (a directory or hub id), for cache keys
        if separate is not None:
            separate.eval().requires_grad_(False)

    @functools.cached_property
    def identity(self) -> str | None:
        """What the reference's weights are, for the caches' keys (``zoo.refcache.model_identity``), taken
        once per run: the training's and the evaluation's caches both read it, and outside a stage it is the
        digest of a whole model directory."""
        from zoo.refcache import model_identity

        return None if self.source is None else model_identity(self.source)

    @contextlib.contextmanager
    def model(self, unwrapped_policy: nn.Module | None = None):
        """Context yielding a module whose forward is the reference's."""
        if self.separate is not None:
            yield self.separate
        else:
            peft_model = unwrapped_policy if unwrapped_policy is not None else self.policy
            with peft_model.disable_adapter():
                yield peft_model

    def to(self, device) -> Reference:
        if self.separate is not None:
            self.separate.to(device)
        return self


# Positions per chunk of the LM head in ``token_logps``: a chunk's (positions, vocab) float32 logits are all
# that exist at once (1,024 x 49,152 x 4 bytes = 201 MB for SmolLM2, instead of the whole batch's).
LOGITS_CHUNK = 1024
# Logits of at most this many elements (64 MB in float32) are computed at once and kept for backward: the
# world's batch (~1,000 positions x 1,536) costs less kept than recomputed; SmolLM2's (x 49,152) is chunked.
SMALL_LOGITS = 2**24


def _trunk_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """(transformer body, LM head) of a plain causal LM (through a peft wrapper), or None where calling them
    apart would change the numbers or bypass a wrapper: a DDP module (its forward syncs gradients), a
    head that is not one linear layer, or a model that scales or caps its logits after the head."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return None
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    trunk = getattr(lm, getattr(lm, "base_model_prefix", ""), None)
    config = getattr(lm, "config", None)
    rescaled = any(getattr(config, key, None) for key in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    if not isinstance(head, nn.Linear) or trunk is None or trunk is lm or rescaled:
        return None
    return trunk, head


def last_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(N, V) next-token logits at the last position of (N, L) rows (left-padded: the last is every row's
    last real token). The LM head runs on that one position only (a judge's prompts are hundreds of
    tokens, and (N, L, V) logits of a 49k vocabulary are gigabytes); models whose head cannot be called
    apart (``_trunk_and_head``) compute the full logits and keep the last."""
    parts = _trunk_and_head(model)
    if parts is None:
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).logits[:, -1]
    trunk, head = parts
    hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).last_hidden_state  # (N, L, H)
    return head(hidden[:, -1])  # (N, V)


def _label_logps(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """(...) log p(label) from (..., V) logits, in float32: minus the cross-entropy, whose fused log-softmax
    and its backward take one pass over the logits each (the label's logit minus a ``logsumexp`` takes five:
    measured on the world's (1300, 1536) logits, fwd + bwd 15.0 -> 11.6 ms)."""
    logits = logits.float()
    if temperature != 1.0:  # a division is a full pass over the logits too
        logits = logits / temperature
    flat = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             reduction="none", ignore_index=-1)  # ids are >= 0: nothing ignored
    return -flat.view(labels.shape)


def _chunk_logps(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """(K,) log p(label) at K positions: (K, H) hidden states -> (K, V) logits."""
    return _label_logps(head(hidden), labels, temperature)


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Sequence indices grouped into rows of at most ``width`` tokens, first-fit by decreasing length (each
    sequence whole in one row); the rows of a padding-free batch."""
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, used in enumerate(fill) if used + lengths[i] <= width), None)
        if r is None:
            rows.append([i])
            fill.append(lengths[i])
        else:
            rows[r].append(i)
            fill[r] += lengths[i]
    return rows


# A row's attention cost grows with its width (the mask is block-diagonal, but SDPA computes the whole
# W x W square): the plan's cost of R rows of width W is R * W * (1 + W / PACKING_ATTENTION_WIDTH)
PACKING_ATTENTION_WIDTH = 200


def packing_cost(width: int, rows: int) -> float:
    """What ``rows`` packed rows of ``width`` tokens cost, in token-layer units (attention counted)."""
    return rows * width * (1 + width / PACKING_ATTENTION_WIDTH)


@functools.lru_cache(maxsize=256)
def packing_plan(lengths: tuple[int, ...]) -> tuple[int, tuple[tuple[int, ...], ...]]:
    """(row width, rows) for packing sequences of these lengths: of the widths from the longest to twice it,
    in tenths, the one whose first-fit-decreasing rows cost least (``PACKING_ATTENTION_WIDTH``). Cached: the
    policy and the reference pack the same batch. On the world's DPO batches this fills 95 % of the slots
    with 2.1 attention cells per needed one, against 90 % and 3.2 for rows of twice the longest."""
    longest = max(lengths)
    best = None
    for width in sorted({longest + (longest * k) // 10 for k in range(11)}):
        rows = pack_rows(list(lengths), width)
        cost = packing_cost(width, len(rows))
        if best is None or cost < best[0]:
            best = (cost, width, rows)
    return best[1], tuple(tuple(row) for row in best[2])  # immutable: every caller of a cached plan shares it


def shared_prefix_groups(input_ids: torch.Tensor, lengths: list[int], prefix_lengths: list[int]) -> list[list[int]]:
    """Sequence indices grouped by identical leading tokens: ``[owner, *sharers]`` where rows have the same
    first ``prefix_lengths[i]`` tokens (a DPO pair's prompt, a KTO example's prompt and its KL row's),
    singletons for the rest. A prefix of 0, or one that is the whole sequence, is never shared."""
    ids = input_ids.tolist()
    owner_of: dict[tuple, int] = {}  # prefix tokens -> the group's position in ``groups``
    groups: list[list[int]] = []
    for i, (length, p) in enumerate(zip(lengths, prefix_lengths)):
        if 0 < p < length:
            key = tuple(ids[i][:p])
            if key in owner_of:
                groups[owner_of[key]].append(i)
                continue
            owner_of[key] = len(groups)
        groups.append([i])
    return groups


def _packed_trunk(trunk: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  prefix_lengths: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The trunk's hidden states for a right-padded (N, T) batch computed without its padding, and each
    shared prefix once, or None when packing saves no row: ((R * W, H) hidden states of the packed rows, the
    (N, T) index of each position's state in them, -1 at padding).

    Sequences that start with the same ``prefix_lengths`` tokens form a group (``shared_prefix_groups``): the
    first is laid out whole, the others only past the prefix, with their ``position_ids`` continuing from it,
    and their index points into the first one's prefix. Groups are packed whole into R rows of W tokens
    (``packing_plan``), unless packing the sequences one by one costs less (``packing_cost``: a group is a
    longer unit, so its rows are wider; on the world's 3-token prompts sharing saves 5 % of the tokens and
    would nearly double the attention cells). Where a prompt is shared, one (R, 1, W, W) attention mask
    keeps each token to what it sees in its own padded sequence: earlier tokens of its own segment, and of
    its group's first sequence before its prefix ends; where none is, no mask is passed, and transformers
    reads each restart of the position ids as a sequence boundary (flash-attention's packed path too).
    A row's unused tail is one more segment, attended by nothing real. Linear layers then run on R x W
    instead of N x T positions: a DPO pair's prompt is computed once, and the padding of a batch of chosen +
    rejected replies (a third of it on the world) not at all."""
    n, longest = input_ids.shape
    lengths = attention_mask.sum(dim=1).tolist()
    groups = [[i] for i in range(n)]
    width, rows = packing_plan(tuple(lengths))
    shared = shared_prefix_groups(input_ids, lengths, prefix_lengths) if prefix_lengths else groups
    if len(shared) < n:  # sharing makes fewer tokens but longer units: worth it where its rows cost less
        units = [lengths[g[0]] + sum(lengths[i] - prefix_lengths[i] for i in g[1:]) for g in shared]
        shared_width, shared_rows = packing_plan(tuple(units))
        if packing_cost(shared_width, len(shared_rows)) < packing_cost(width, len(rows)):
            groups, width, rows = shared, shared_width, shared_rows
    if len(rows) >= n:
        return None
    src, dst = [], []  # flat indices in the (N, T) batch and in the (R, W) rows
    shared_src, shared_dst = [], []  # a sharer's prefix positions and its owner's slots for them
    positions, segment, owner, prefix = [], [], [], []  # per slot: position id, its sequence, the sequence whose
    # prefix it may see, and how much of it (0: none)

    def lay(i: int, first: int, until: int, own: int, p: int, offset: int) -> int:
        src.extend(range(i * longest + first, i * longest + until))
        dst.extend(range(offset, offset + until - first))
        positions.extend(range(first, until))
        segment.extend([i] * (until - first))
        owner.extend([own] * (until - first))
        prefix.extend([p] * (until - first))
        return offset + until - first

    for r, members in enumerate(rows):
        offset = r * width
        for g in members:
            head, *sharers = groups[g]
            start = offset
            offset = lay(head, 0, lengths[head], head, 0, offset)
            for i in sharers:
                p = prefix_lengths[i]
                shared_src.extend(range(i * longest, i * longest + p))
                shared_dst.extend(range(start, start + p))
                offset = lay(i, p, lengths[i], head, p, offset)
        tail = (r + 1) * width - offset
        positions.extend(range(tail))
        segment.extend([n + r] * tail)
        owner.extend([n + r] * tail)
        prefix.extend([0] * tail)
    device = input_ids.device
    src, dst = torch.tensor(src, device=device), torch.tensor(dst, device=device)
    packed_ids = torch.zeros(len(rows) * width, dtype=input_ids.dtype, device=device)
    packed_ids[dst] = input_ids.reshape(-1)[src]
    pos = torch.tensor(positions, device=device).view(len(rows), width)
    mask = None  # no prompt shared: transformers reads the position restarts as boundaries (flash-attention's too)
    if len(groups) < n:  # (R, W queries, W keys): causal in a sequence, and its owner's tokens before its prefix ends
        seg, own, pre = (torch.tensor(x, device=device).view(len(rows), width) for x in (segment, owner, prefix))
        key_pos, key_seg = pos[:, None, :], seg[:, None, :]
        mask = ((key_pos <= pos[:, :, None]) & (
            (key_seg == seg[:, :, None]) | ((key_seg == own[:, :, None]) & (key_pos < pre[:, :, None]))))[:, None]
    hidden = trunk(input_ids=packed_ids.view(len(rows), width), position_ids=pos, attention_mask=mask,
                   use_cache=False).last_hidden_state  # (R, W, H)
    index = torch.full((n * longest,), -1, dtype=torch.long, device=device)
    index[src] = dst
    if shared_src:
        index[torch.tensor(shared_src, device=device)] = torch.tensor(shared_dst, device=device)
    return hidden.reshape(-1, hidden.shape[-1]), index.view(n, longest)


def _packed_hidden(trunk: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   prefix_lengths: list[int] | None = None) -> torch.Tensor | None:
    """(N, T, H) hidden states of a right-padded batch computed padding-free (``_packed_trunk``), scattered back
    to their padded places (zeros at padding), or None when packing saves no row."""
    packed = _packed_trunk(trunk, input_ids, attention_mask, prefix_lengths)
    if packed is None:
        return None
    flat, index = packed
    real = index >= 0
    out = flat.new_zeros(*index.shape, flat.shape[-1])
    out[real] = flat.index_select(0, index[real])
    return out


def _packing_check(trunk: nn.Module, shared: bool) -> bool:
    """Whether ``trunk`` gives packed rows (``_packed_hidden``) the hidden states of the padded forward, on a
    small random batch: with ``shared``, three of its rows share 4 leading tokens and are packed as one group
    (the 4D-mask path); without, every row is its own sequence (the position-restart path)."""
    config = getattr(trunk, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        return False
    device = next(trunk.parameters()).device
    ids = torch.randint(0, vocab, (4, 12), generator=torch.Generator().manual_seed(0))
    if shared:
        ids[1:3, :4] = ids[0, :4]  # rows 0-2 share 4 leading tokens; row 3 shares nothing
    ids = ids.to(device)
    mask = torch.tensor([[1] * 12, [1] * 5 + [0] * 7, [1] * 7 + [0] * 5, [1] * 6 + [0] * 6], device=device)
    was_training = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            padded = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
            packed = _packed_hidden(trunk, ids, mask, [4, 4, 4, 4] if shared else None)
        real = mask.bool()
        # float rounding differs by dtype; attention across sequences would differ by O(1) in any dtype
        tolerance = 1e-3 if padded.dtype == torch.float32 else 5e-2
        return packed is not None and torch.allclose(packed[real].float(), padded[real].float(), atol=tolerance,
                                                     rtol=tolerance)
    except (TypeError, ValueError, RuntimeError):  # a forward without position_ids, or another mask contract
        return False
    finally:
        trunk.train(was_training)


def packing_works(trunk: nn.Module) -> bool:
    """Whether ``trunk`` reads packed rows as separate sequences (``position_ids`` restarting), checked once per
    model against the padded forward (a model that ignores the restarts, e.g. remote code, keeps the padded
    path)."""
    if getattr(trunk, "_zoo_packing_works", None) is None:
        trunk._zoo_packing_works = _packing_check(trunk, shared=False)
    return trunk._zoo_packing_works


def prompt_sharing_works(trunk: nn.Module) -> bool:
    """Whether ``trunk`` follows a 4D attention mask over packed rows, so rows with one prompt can share it,
    checked once per model against the padded forward (flash-attention, which takes no such mask, packs
    without sharing)."""
    if getattr(trunk, "_zoo_prompt_sharing_works", None) is None:
        trunk._zoo_prompt_sharing_works = _packing_check(trunk, shared=True)
    return trunk._zoo_prompt_sharing_works


def token_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                temperature: float = 1.0, positions: torch.Tensor | None = None,
                prefix_lengths: list[int] | None = None) -> torch.Tensor:
    """(N, T-1) log p(x_t | x_<t) for t = 1..T-1 at ``positions`` (an (N, T-1) 0/1 mask; default: every real
    token), 0 elsewhere.

    The full (N, T, V) logits never exist: the trunk's hidden states at the wanted positions go through the
    LM head ``LOGITS_CHUNK`` positions at a time, and each chunk keeps only its labels' log-probs (minus a
    fused cross-entropy); under autograd a chunk is recomputed in backward (``torch.utils.checkpoint``)
    instead of keeping its logits (unless all of them fit in ``SMALL_LOGITS``: then in one piece, kept). The
    trunk runs padding-free where the model allows it (``_packed_trunk``), and the wanted positions are read
    from its packed rows. The same numbers as ``log_softmax(model(x).logits)`` gathered at the labels, up to
    float rounding (the head's matmul runs on fewer rows). Models whose head cannot be called apart (see
    ``_trunk_and_head``) take the full-logits path."""
    if positions is None:
        positions = attention_mask[:, 1:]
    labels = input_ids[:, 1:]  # (N, T-1)
    parts = _trunk_and_head(model)
    if parts is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]  # (N, T-1, V)
        out = _label_logps(logits, labels, temperature)
        return out * positions.to(out.dtype)
    trunk, head = parts
    where = positions.bool()
    packed = None
    if packing_works(trunk):
        shared = prefix_lengths if prefix_lengths and prompt_sharing_works(trunk) else None
        packed = _packed_trunk(trunk, input_ids, attention_mask, shared)
    if packed is not None:  # the wanted positions' states read straight from the packed rows
        flat, index = packed
        picked = flat.index_select(0, index[:, :-1][where])  # (K, H)
    else:
        hidden = trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (N, T, H)
        picked = hidden[:, :-1][where]  # (K, H)
    picked_labels = labels[where]  # (K,)
    chunks = []
    if len(picked) * head.out_features <= SMALL_LOGITS:  # small enough to keep: no chunks, no recompute
        chunks.append(_chunk_logps(head, picked, picked_labels, temperature))
        picked = picked[:0]
    for start in range(0, len(picked), LOGITS_CHUNK):
        h, y = picked[start:start + LOGITS_CHUNK], picked_labels[start:start + LOGITS_CHUNK]
        if torch.is_grad_enabled() and h.requires_grad:
            chunks.append(torch.utils.checkpoint.checkpoint(_chunk_logps, head, h, y, temperature, use_reentrant=False))
        else:
            chunks.append(_chunk_logps(head, h, y, temperature))
    out = torch.zeros(labels.shape, dtype=torch.float32, device=input_ids.device)  # (N, T-1)
    if chunks:
        out = out.masked_scatter(where, torch.cat(chunks))
    return out


def prompt_lengths(batch: dict) -> list[int]:
    """Each collated row's prompt length: its tokens before the first completion token (0 for a row whose
    completion was cut off entirely, so it shares nothing)."""
    completion = batch["completion_mask"]  # (N, T)
    first = completion.int().argmax(dim=1)  # the first 1 (argmax returns the first maximum)
    return torch.where(completion.any(dim=1), first, 0).tolist()


def sequence_logps(model: nn.Module, batch: dict, temperature: float = 1.0, all_tokens: bool = False) -> SequenceLogps:
    """Completion log-probs of a collated batch (see ``zoo.data.collate``) and the batch's labels if it has
    them (KTO); with ``all_tokens`` also every real token's (ORPO's NLL covers the prompt too, as TRL's).
    Only the positions asked for go through the LM head; rows with the same prompt (a pair's chosen and
    rejected, a KTO example and its KL row) compute it once."""
    mask = batch["completion_mask"][:, 1:].to(torch.float32)  # shift: token t is predicted at position t-1
    prefixes = prompt_lengths(batch)
    if not all_tokens:
        logps = token_logps(model, batch["input_ids"], batch["attention_mask"], temperature, positions=mask,
                            prefix_lengths=prefixes)
        return SequenceLogps(token_logps=logps, completion_mask=mask, labels=batch.get("labels"))
    token_mask = batch["attention_mask"][:, 1:].to(torch.float32)
    logps = token_logps(model, batch["input_ids"], batch["attention_mask"], temperature, positions=token_mask,
                        prefix_lengths=prefixes)
    return SequenceLogps(token_logps=logps * mask, completion_mask=mask, labels=batch.get("labels"),
                         all_token_logps=logps, token_mask=token_mask)


def last_token_scores(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(N,) a ``num_labels=1`` sequence-classification model's score at each row's last real token (right
    padding: position ``attention_mask.sum - 1``), the position a LoRA reward model's ``ScalarHead.scores``
    reads too. transformers' own pooling reads the last token that is not PAD, which is the same token when
    PAD differs from EOS (the same ops, the same numbers) but the one before the EOS when PAD = EOS
    (SmolLM2): the reward model would score a prompt-and-response without its end."""
    seq_cls = model.get_base_model() if hasattr(model, "get_base_model") else model  # through a peft wrapper
    hidden = seq_cls.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    logits = seq_cls.score(hidden)  # (N, T, 1); under LoRA the adapter's trained copy of the head
    last = attention_mask.sum(dim=1).long() - 1  # (N,)
    return logits[torch.arange(len(last), device=logits.device), last].squeeze(-1)


def sequence_scores(model: nn.Module, batch: dict) -> SequenceScores:
    """(N,) scalar scores of a collated batch from a ``num_labels=1`` sequence-classification model."""
    return SequenceScores(scores=last_token_scores(model, batch["input_ids"], batch["attention_mask"]).float())


# ---------------------------------------------------------------------------------------------
# Scalar heads on a causal LM's trunk: PPO's value model and a reward model kept as a LoRA adapter
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def active_adapter(peft_model: nn.Module, name: str):
    """Run a block with LoRA adapter ``name`` active, then restore the previous adapter.

    peft's ``set_adapter`` also flips ``requires_grad`` (only the active adapter trainable); PPO trains
    two adapters of one model in one backward pass, so the flags are saved and put back.
    """
    previous = peft_model.active_adapter
    if previous == name:
        yield peft_model
        return
    flags = {p: p.requires_grad for p in peft_model.parameters()}
    peft_model.set_adapter(name)
    try:
        yield peft_model
    finally:
        peft_model.set_adapter(previous)
        for p, flag in flags.items():
            p.requires_grad_(flag)


def trunk_of(causal_lm: nn.Module) -> nn.Module:
    """The transformer body (hidden states, no LM head) of a causal LM, through a peft wrapper if any."""
    model = causal_lm.get_base_model() if hasattr(causal_lm, "get_base_model") else causal_lm
    return model.base_model  # transformers: getattr(model, model.base_model_prefix), e.g. LlamaModel


class ScalarHead(nn.Module):
    """A scalar per position on top of a transformer trunk: PPO's value model, or a reward model.

    The trunk is either its own module (a separate model) or, with ``shared`` set to a peft model,
    that model's trunk run with LoRA adapter ``adapter`` active: several heads then share one frozen
    base. The shared trunk is kept outside this module's parameters (it belongs to the policy), so it
    is trained, saved and checkpointed once.
    """

    def __init__(self, trunk: nn.Module | None, hidden_size: int, shared: nn.Module | None = None,
                 adapter: str | None = None, bias: bool = True):
        super().__init__()
        if (trunk is None) == (shared is None):
            raise ValueError("ScalarHead needs exactly one of trunk= (own model) or shared= (a peft model)")
        self.trunk = trunk
        self._shared = (shared,)  # a tuple: not registered as a submodule
        self.adapter = adapter
        self.head = nn.Linear(hidden_size, 1, bias=bias)
        self.checkpoint = False

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, T, H) the trunk's final hidden states (through adapter ``adapter`` on a shared model)."""
        shared = self._shared[0]
        if shared is None:
            return self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        with active_adapter(shared, self.adapter):
            return trunk_of(shared)(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, T) one scalar per position, read from the final hidden state.

        With ``checkpoint`` set (PPO's value model) and grad on, the trunk's activations are not kept:
        they are recomputed in the backward pass (``torch.utils.checkpoint``), one extra trunk forward
        in exchange for holding only one network's activations at a time (see ``ActorCritic``).
        """
        if self.checkpoint and torch.is_grad_enabled():
            hidden = torch.utils.checkpoint.checkpoint(self.hidden_states, input_ids, attention_mask,
                                                       use_reentrant=False)
        else:
            hidden = self.hidden_states(input_ids, attention_mask)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)

    def scores(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N,) the scalar at each row's last non-pad token (right padding), as a reward model reads it."""
        last = attention_mask.sum(dim=1).long() - 1  # (N,)
        return self(input_ids, attention_mask).gather(1, last.unsqueeze(1)).squeeze(1)


def value_model(init_path: str, hidden_size: int, dtype: str = "float32", trust_remote_code: bool = False,
                shared: nn.Module | None = None) -> ScalarHead:
    """PPO's value model: the trunk of ``init_path`` (the RM or the SFT policy) or an adapter
    ``"value"`` on ``shared``, with a new head initialised at zero (V = 0 everywhere at the start, so
    the first advantages are the rewards-to-go themselves, not a random head's noise)."""
    from transformers import AutoModel

    trunk = None
    if shared is None:
        repo, revision = checked_hub_ref(init_path, trust_remote_code)
        trunk = AutoModel.from_pretrained(repo, **revision, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                          use_safetensors=True)
        disable_dropout(trunk)
        hidden_size = trunk.config.hidden_size  # an RM of another architecture than the policy: its own width
    value = ScalarHead(trunk, hidden_size, shared=shared, adapter="value" if shared is not None else None)
    nn.init.zeros_(value.head.weight)
    nn.init.zeros_(value.head.bias)
    return value


def is_adapter_dir(path: str | Path) -> bool:
    """True for a saved peft adapter (a LoRA reward model), False for a full model."""
    return (Path(path) / "adapter_config.json").exists()


def _set_adapter_trainable(peft_model: nn.Module, name: str, trainable: bool) -> None:
    """``requires_grad`` on adapter ``name``'s parameters only (peft's add_adapter leaves new ones frozen)."""
    for param_name, param in peft_model.named_parameters():
        if f".{name}." in param_name:
            param.requires_grad_(trainable)


def add_adapter_from(peft_model: nn.Module, adapter_dir: str | Path, name: str, trainable: bool) -> dict:
    """Load the LoRA weights saved in ``adapter_dir`` (e.g. a SEQ_CLS reward model trained on the same
    base) into ``peft_model`` as adapter ``name``; returns the saved tensors that are not LoRA weights
    (a classification head), keyed by their module path (``score.weight``)."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = LoraConfig.from_pretrained(str(adapter_dir))
    config = LoraConfig(r=saved.r, lora_alpha=saved.lora_alpha, lora_dropout=saved.lora_dropout,
                        target_modules=saved.target_modules, task_type="CAUSAL_LM")
    state = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    lora = {k: v for k, v in state.items() if "lora_" in k}
    rest = {k.removeprefix("base_model.model."): v for k, v in state.items() if "lora_" not in k}
    peft_model.add_adapter(name, config)
    result = set_peft_model_state_dict(peft_model, lora, adapter_name=name)
    missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
    if missing or result.unexpected_keys:
        raise ValueError(f"{adapter_dir}: adapter does not fit this model (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]})")
    _set_adapter_trainable(peft_model, name, trainable)
    return rest


def add_fresh_adapter(peft_model: nn.Module, name: str, r: int, alpha: int, dropout: float,
                      target_modules: list[str] | str) -> None:
    """A new trainable LoRA adapter ``name`` on ``peft_model`` (B = 0: it starts as the base itself)."""
    from peft import LoraConfig

    peft_model.add_adapter(name, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=_lora_targets(target_modules), task_type="CAUSAL_LM"))
    _set_adapter_trainable(peft_model, name, True)


def adapter_reward_model(peft_model: nn.Module, adapter_dir: str | Path, hidden_size: int) -> ScalarHead:
    """A LoRA reward model (trained with ``peft=lora`` on the reference) as adapter ``"reward"`` of
    ``peft_model`` plus its head: the RM costs no second copy of the base."""
    rest = add_adapter_from(peft_model, adapter_dir, "reward", trainable=False)
    heads = [k for k in rest if k.endswith(".weight") and rest[k].shape[0] == 1]
    if len(heads) != 1:
        raise ValueError(f"{adapter_dir}: expected one scalar head in the adapter, found {sorted(rest)}")
    reward = ScalarHead(None, hidden_size, shared=peft_model, adapter="reward", bias=False)
    reward.head.weight.data.copy_(rest[heads[0]])
    reward.requires_grad_(False)
    return reward


class ActorCritic(nn.Module):
    """PPO's trained pair: the policy (a causal LM) and the value model, one optimizer for both; for a loss
    without a value model (RLOO, GRPO: ``model_output="rollout_logps"``) the policy alone (``value=None``).

    ``forward`` returns (token log-probs at ``temperature`` (N, T-1), values (N, T-1) or None); column t is
    about token t+1, so the value is the one of the state the token was sampled in.
    """

    def __init__(self, policy: nn.Module, value: ScalarHead | None, checkpoint_value: bool = False):
        super().__init__()
        self.policy = policy
        self.value = value
        if value is not None:
            value.checkpoint = checkpoint_value

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                completion_mask: torch.Tensor | None = None):
        # completion_mask: (N, T-1) the positions whose log-probs are wanted (None: every real token).
        # The value model runs first and, if checkpointed, keeps no activations; autograd then walks the
        # policy's graph first (it was built last), freeing it before the value trunk is recomputed, so
        # the update holds one network's activations at a time instead of both.
        values = None if self.value is None else self.value(input_ids, attention_mask)[:, :-1]
        if hasattr(self.policy, "peft_config"):  # the value / reward adapters may share this model
            with active_adapter(self.policy, "default"):
                logps = token_logps(self.policy, input_ids, attention_mask, temperature, completion_mask)
        else:
            logps = token_logps(self.policy, input_ids, attention_mask, temperature, completion_mask)
        return logps, values


def policy_value_outputs(model: nn.Module, batch: dict):
    """A rollout minibatch (see ``zoo.rollout.Experience``) -> ``PolicyValueOutput`` for an ``OnPolicyLoss``
    (values, old values and returns None without a value model)."""
    from zoo.losses.on_policy import PolicyValueOutput

    mask = batch["completion_mask"][:, 1:].to(torch.float32)  # (N, T-1) response tokens
    logps, values = model(batch["input_ids"], batch["attention_mask"], batch["temperature"], mask)
    return PolicyValueOutput(
        policy=SequenceLogps(token_logps=logps, completion_mask=mask),  # logps: 0 off the mask
        values=None if values is None else values * mask, old_logps=batch["old_logps"],
        old_values=batch.get("old_values"), ref_logps=batch["ref_logps"], advantages=batch["advantages"],
        returns=batch.get("returns"), kl_coef=batch["kl_coef"])
