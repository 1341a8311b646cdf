"""Building the policy and its frozen reference from the model, peft and quant configs.

Safe defaults: weights load from safetensors only and ``trust_remote_code`` is off unless the model
config turns it on. Under LoRA the reference is the policy's own base with the adapters disabled
(``peft``'s ``disable_adapter()``), so no second copy of the weights is held in memory; without LoRA
it is a separate frozen copy.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from zoo.losses.base import SequenceLogps, SequenceScores

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The tokenizer, with a PAD token (falls back to EOS only when the model defines none)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(bits: int | None, compute_dtype: torch.dtype):
    """A bitsandbytes config for 4- or 8-bit loading (QLoRA = peft=lora quant=4bit); needs CUDA."""
    if bits is None:
        return None
    if bits not in (4, 8):
        raise ValueError(f"quant.bits must be 4, 8 or null, got {bits}")
    if not torch.cuda.is_available():
        raise RuntimeError(f"quant={bits}bit needs a CUDA GPU (bitsandbytes); this machine has none. Use quant=none.")
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
                   quant_bits: int | None = None) -> nn.Module:
    """A causal LM from safetensors weights."""
    torch_dtype = DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(
        name_or_path, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
        quantization_config=quantization_config(quant_bits, torch_dtype),
    )
    disable_dropout(model)
    return model


def load_reward_model(name_or_path: str, pad_token_id: int, dtype: str = "float32", trust_remote_code: bool = False,
                      quant_bits: int | None = None) -> nn.Module:
    """A scalar-head model (``num_labels=1``) initialised from a causal LM: the trunk is the LM's, the
    head is new. Transformers' sequence-classification models read the head at the last non-pad token,
    so ``pad_token_id`` must be set (and differ from EOS, or the EOS itself would count as padding)."""
    torch_dtype = DTYPES[dtype]
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=1, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
        quantization_config=quantization_config(quant_bits, torch_dtype), pad_token_id=pad_token_id,
    )
    disable_dropout(model)
    return model


def apply_lora(model: nn.Module, r: int, alpha: int, dropout: float, target_modules: list[str] | str,
               quantized: bool = False, task_type: str = "CAUSAL_LM") -> nn.Module:
    """Wrap ``model`` with fresh LoRA adapters; only the adapters (and, for SEQ_CLS, the head) train."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules)
                        if not isinstance(target_modules, str) else target_modules, task_type=task_type)
    return get_peft_model(model, config)


class Reference:
    """The frozen reference policy: a separate frozen model, or the LoRA policy with adapters off."""

    def __init__(self, policy: nn.Module, separate: nn.Module | None):
        self.policy = policy
        self.separate = separate
        if separate is not None:
            separate.eval().requires_grad_(False)

    @contextlib.contextmanager
    def model(self, unwrapped_policy: nn.Module | None = None):
        """Context yielding a module whose forward is the reference's."""
        if self.separate is not None:
            yield self.separate
        else:
            peft_model = unwrapped_policy if unwrapped_policy is not None else self.policy
            with peft_model.disable_adapter():
                yield peft_model

    def to(self, device) -> "Reference":
        if self.separate is not None:
            self.separate.to(device)
        return self


def token_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                temperature: float = 1.0) -> torch.Tensor:
    """(N, T-1) log p(x_t | x_<t) for t = 1..T-1, without materialising a full log-softmax copy."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
    logits = logits.float() / temperature  # (N, T-1, V)
    labels = input_ids[:, 1:].unsqueeze(-1)  # (N, T-1, 1)
    return logits.gather(-1, labels).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def sequence_logps(model: nn.Module, batch: dict, temperature: float = 1.0) -> SequenceLogps:
    """Completion log-probs of a collated batch (see ``zoo.data.collate``)."""
    mask = batch["completion_mask"][:, 1:].to(torch.float32)  # shift: token t is predicted at position t-1
    logps = token_logps(model, batch["input_ids"], batch["attention_mask"], temperature) * mask
    return SequenceLogps(token_logps=logps, completion_mask=mask)


def sequence_scores(model: nn.Module, batch: dict) -> SequenceScores:
    """(N,) scalar scores of a collated batch from a ``num_labels=1`` sequence-classification model."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return SequenceScores(scores=logits.squeeze(-1).float())


# What each loss's ``model_output`` declaration asks the trainer to compute.
MODEL_OUTPUTS = {"logps": sequence_logps, "scores": sequence_scores}
