"""Shrunken, random copies of the hub models zoo has configs for (``zoo/conf/model/hub/``), written as the
hub writes them, so the configs' real loading code (``from_pretrained`` on a directory) is tested offline.

Each copy has its hub ``config.json``'s fields that loading and tokenization depend on (architecture,
vocabulary size, special-token ids, tied or untied embeddings, RoPE settings) at toy width and depth, and
tokenizer files of the hub's kind: its tokenizer class, its special tokens at their hub ids, its BOS /
EOS / PAD / UNK settings, whether it prepends BOS, and a chat template where the hub ships one (of the
same kind: ChatML with a default system turn; Llama 3.2's header format with today's date). The ordinary
tokens are the world's byte-level BPE vocabulary rather than the hub's (tens of thousands of merges the
tests do not need); the embedding matrices still have the hub's full vocabulary size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from zoo.world import paths

# Small width and depth. Where the hub model has grouped-query attention its ratio of query to key/value heads
# is kept (SmolLM2 3:1, Qwen2.5 7:1, Llama 3.2 4:1), at fewer heads.
WIDTH, LAYERS, HEADS, FFN = 64, 2, 4, 128

SMOLLM2_CHATML = ("{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
                  "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                  "<|im_end|>\\n' }}{% endif %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                  "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                  "{% endif %}")
QWEN_CHATML = SMOLLM2_CHATML.replace("You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                                     "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
QWEN_BASE_CHATML = SMOLLM2_CHATML.replace("You are a helpful AI assistant named SmolLM, trained by Hugging Face",
                                          "You are a helpful assistant.")
PLAIN_CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                "{% endif %}")
# Llama 3.2's kind of template: the system header carries the knowledge cutoff and today's date
LLAMA3_DATED = ("{{ bos_token }}{% if strftime_now is defined %}{% set date = strftime_now('%d %b %Y') %}"
                "{% else %}{% set date = '26 Jul 2024' %}{% endif %}"
                "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
                "Today Date: ' + date + '\\n\\n<|eot_id|>' }}{% for message in messages %}"
                "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + "
                "'<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
                "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

SMOLLM2_SPECIAL = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
QWEN_SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
LLAMA3_SPECIAL = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<|finetune_right_pad_id|>": 128004,
                  "<|start_header_id|>": 128006, "<|end_header_id|>": 128007, "<|eot_id|>": 128009}
LLAMA_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}


@dataclass(frozen=True)
class HubModel:
    """One hub model: its zoo config, its ``config.json`` fields and its tokenizer files' settings."""

    config: str  # zoo/conf/model/hub/<config>.yaml
    hub_id: str
    config_json: dict  # the hub's fields (with toy sizes)
    tokenizer_class: str | None  # None: tokenizer_config.json names none (gpt2's: the class comes from config.json)
    special: dict  # token -> hub id
    tokens: dict  # tokenizer_config.json's bos_token / eos_token / pad_token / unk_token (None: unset)
    chat_template: str | None = None  # None: the hub ships none
    prepends_bos: bool = False  # the tokenizer's post-processor puts BOS before every text (Llama 3)
    extra: dict = field(default_factory=dict)  # other tokenizer_config.json fields


def _llama(vocab: int, heads: int, kv_heads: int, tied: bool, bos: int, eos, rope_theta: float, positions: int,
           **more) -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": 32 * heads, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "tie_word_embeddings": tied, "bos_token_id": bos, "eos_token_id": eos,
            "rope_theta": rope_theta, "max_position_embeddings": positions, "rms_norm_eps": 1e-5,
            "hidden_act": "silu", "torch_dtype": "bfloat16", **more}


def _smollm2(size: str, instruct: bool) -> HubModel:
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2} if instruct else {"bos_token_id": 0,
                                                                                      "eos_token_id": 0}
    tokens = ({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
               "unk_token": "<|endoftext|>"} if instruct else
              {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"})
    name = f"smollm2-{size}" + ("-instruct" if instruct else "")
    config = _llama(49152, 3, 1, True, ids["bos_token_id"], ids["eos_token_id"], 100000.0, 8192)
    config.update(ids)
    # the base tokenizer's template (ChatML without a system turn, as far as could be checked offline): the
    # config sets zoo's chatml either way
    return HubModel(name, f"HuggingFaceTB/SmolLM2-{size.upper()}" + ("-Instruct" if instruct else ""), config,
                    "GPT2Tokenizer", SMOLLM2_SPECIAL, tokens, SMOLLM2_CHATML if instruct else PLAIN_CHATML)


def _qwen(instruct: bool) -> HubModel:
    eos = 151645 if instruct else 151643
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
              "hidden_size": 7 * 16, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
              "num_attention_heads": 7, "num_key_value_heads": 1, "tie_word_embeddings": True,
              "bos_token_id": 151643, "eos_token_id": eos, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
              "rms_norm_eps": 1e-6, "use_sliding_window": False, "hidden_act": "silu", "torch_dtype": "bfloat16"}
    tokens = {"bos_token": None, "eos_token": "<|im_end|>" if instruct else "<|endoftext|>",
              "pad_token": "<|endoftext|>", "unk_token": None}
    return HubModel("qwen2.5-0.5b" + ("-instruct" if instruct else ""), "Qwen/Qwen2.5-0.5B" + ("-Instruct" if instruct
                    else ""), config, "Qwen2Tokenizer", QWEN_SPECIAL, tokens, QWEN_CHATML if instruct else QWEN_BASE_CHATML)


def _pythia(size: str) -> HubModel:
    config = {"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "vocab_size": 50304,
              "hidden_size": WIDTH, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "rotary_pct": 0.25, "rotary_emb_base": 10000,
              "max_position_embeddings": 2048, "use_parallel_residual": True, "tie_word_embeddings": False,
              "bos_token_id": 0, "eos_token_id": 0, "layer_norm_eps": 1e-5, "hidden_act": "gelu",
              "torch_dtype": "float16"}
    tokens = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    return HubModel(f"pythia-{size}", f"EleutherAI/pythia-{size}", config, "GPTNeoXTokenizer",
                    {"<|endoftext|>": 0, "<|padding|>": 1}, tokens)


def _llama32(instruct: bool) -> HubModel:
    eos = [128001, 128008, 128009] if instruct else 128001
    config = _llama(128256, 4, 1, True, 128000, eos, 500000.0, 131072, rope_scaling=LLAMA_ROPE)
    tokens = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>" if instruct else "<|end_of_text|>"}
    return HubModel("llama-3.2-1b" + ("-instruct" if instruct else ""), "meta-llama/Llama-3.2-1B" + ("-Instruct" if
                    instruct else ""), config, "PreTrainedTokenizerFast", LLAMA3_SPECIAL, tokens,
                    LLAMA3_DATED if instruct else None, prepends_bos=True)  # the base ships no template


def _gpt2() -> HubModel:
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 50257, "n_embd": WIDTH,
              "n_layer": LAYERS, "n_head": HEADS, "n_positions": 1024, "n_ctx": 1024, "bos_token_id": 50256,
              "eos_token_id": 50256, "tie_word_embeddings": True, "activation_function": "gelu_new"}
    # its tokenizer_config.json is only {"model_max_length": 1024}: the class comes from config.json's model
    # type, the special tokens from GPT2Tokenizer's defaults
    return HubModel("gpt2", "openai-community/gpt2", config, None, {"<|endoftext|>": 50256}, {})


HUB_MODELS = {m.config: m for m in [
    _smollm2("135m", False), _smollm2("135m", True), _smollm2("360m", False), _smollm2("360m", True),
    _qwen(False), _qwen(True), _pythia("160m"), _pythia("410m"), _llama32(False), _llama32(True), _gpt2(),
]}


def write_tokenizer(spec: HubModel, out: Path) -> None:
    """tokenizer.json (byte-level BPE: the world's merges, the spec's special tokens at their hub ids) and
    tokenizer_config.json as the hub's name its class, special tokens and chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    world = json.loads((paths.MODEL / "tokenizer.json").read_text())["model"]
    ordinary = [t for t, _ in sorted(world["vocab"].items(), key=lambda item: item[1])
                if t not in ("<|endoftext|>", "<|pad|>")]
    taken = set(spec.special.values())
    free = (i for i in range(10**7) if i not in taken)
    vocab = {token: next(free) for token in ordinary}
    vocab.update(spec.special)
    assert max(vocab.values()) < spec.config_json["vocab_size"], spec.config
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in world["merges"]]
    core = Tokenizer(models.BPE(vocab, merges))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in spec.special])
    if spec.prepends_bos:
        bos = spec.tokens["bos_token"]
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                            special_tokens=[(bos, spec.special[bos])])
    out.mkdir(parents=True, exist_ok=True)
    core.save(str(out / "tokenizer.json"))
    config = {"model_max_length": spec.config_json.get("max_position_embeddings", spec.config_json.get("n_positions")),
              **spec.tokens, **spec.extra}
    if spec.tokenizer_class is not None:
        config["tokenizer_class"] = spec.tokenizer_class
    if spec.chat_template is not None:
        config["chat_template"] = spec.chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = {k: v for k, v in spec.tokens.items() if v is not None}
    if special_map:
        (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))


def write_model(spec: HubModel, out: Path, seed: int = 0) -> Path:
    """The shrunken model in ``out``: random weights as safetensors, the hub's config.json fields, its
    tokenizer files."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(spec.config_json)
    model_type = fields.pop("model_type")
    fields.pop("architectures")
    dtype = fields.pop("torch_dtype", "float32")
    config = AutoConfig.for_model(model_type, **fields)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(spec, out)
    return out
