"""A shrunken SmolLM2-shaped model written as a GGUF file, as llama.cpp's converter writes one, so the
tests exercise ``zoo.packaged.convert_gguf`` without downloading anything.

The model is SmolLM2-135M-Instruct's architecture at toy size: a Llama with grouped-query attention (3
query heads sharing 1 key/value head, SmolLM2's 3:1 ratio), tied input and output embeddings, RoPE base
1e5, its ChatML template and PAD = EOS (``<|im_end|>``). The tokenizer is the world's byte-level BPE
(its vocabulary and merges) plus SmolLM2's three ChatML tokens. Tensors are stored as F32 (exact), with
the query and key rows permuted as llama.cpp does (transformers' GGUF loader undoes it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from zoo.world import paths

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # SmolLM2's ids 0, 1, 2


def _tokenizer_parts() -> tuple[list[str], list[str]]:
    """The world tokenizer's tokens in id order after SmolLM2's special tokens, and its merges."""
    model = json.loads((paths.MODEL / "tokenizer.json").read_text())["model"]
    vocab = sorted(model["vocab"].items(), key=lambda item: item[1])
    tokens = SPECIAL + [t for t, _ in vocab if t not in ("<|endoftext|>", "<|pad|>")]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, merges


def tiny_smollm2(vocab_size: int, seed: int = 0):
    """A random SmolLM2-shaped Llama at toy size. Every projection's input size is a multiple of 64 and its
    output size one of 32, as SmolLM2's are: bitsandbytes' CPU 4-bit generation kernel needs both."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=192, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=3, num_key_value_heads=1, head_dim=64, max_position_embeddings=256,
                         rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(config).eval()


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's rotary layout of a query / key projection (rows regrouped per head)."""
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(
        weight.shape)


def write_gguf(model, path: Path) -> Path:
    """``model`` (from :func:`tiny_smollm2`) as a GGUF file with its tokenizer and chat template."""
    import gguf

    c = model.config
    tokens, merges = _tokenizer_parts()
    assert len(tokens) == c.vocab_size, (len(tokens), c.vocab_size)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_dimension_count(c.head_dim)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_vocab_size(c.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL)))  # 3: control, 1: normal
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHATML)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    per_layer = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
                 "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for i in range(c.num_hidden_layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to the embeddings
        array = tensor.detach().float().numpy()
        if ".q_proj." in name:
            array = _permute(array, c.num_attention_heads)
        elif ".k_proj." in name:
            array = _permute(array, c.num_key_value_heads)
        writer.add_tensor(names[name], np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
