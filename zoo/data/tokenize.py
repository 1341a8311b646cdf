"""Tokenization of prompt + completion exactly as TRL's trainers do it.

For a standard (string) example TRL tokenizes ``prompt`` and ``prompt + completion + eos`` separately
and takes the completion to start where the two token sequences diverge (BPE merges can cross the
boundary); for conversational examples it renders both through the chat template (the prompt with
``add_generation_prompt=True``) and, since the template ends the assistant turn itself, adds no
extra EOS. A conversational prompt with a string completion (a chat model's sampled reply, as the
preference stage writes it) takes the string as the assistant's message. Matching this keeps zoo's log-probabilities equal to TRL's on the same data.

``prepend_bos`` (a loss's declaration, ORPO's) puts the tokenizer's BOS token before a prompt that does
not start with it, as TRL's ORPOTrainer does even for tokenizers that do not add BOS themselves.
"""

from __future__ import annotations


def is_messages(value) -> bool:
    """A conversational field: a list of ``{"role", "content"}`` messages (TRL's test: a role on the first)."""
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def common_prefix_length(ids: list[int], other_ids: list[int]) -> int:
    """How many leading tokens two id lists share (where a completion starts after its prompt, as in TRL)."""
    length = 0
    for token, other in zip(ids, other_ids):
        if token != other:
            break
        length += 1
    return length


def _ids(tokenizer, text_or_messages, **chat_kwargs) -> list[int]:
    """Token ids of a string (no special tokens added twice) or of messages via the chat template."""
    if isinstance(text_or_messages, list):
        out = tokenizer.apply_chat_template(text_or_messages, tokenize=True, return_dict=True, **chat_kwargs)
        return list(out["input_ids"])
    return tokenizer(text_or_messages)["input_ids"]


def _with_bos(tokenizer, prompt_ids: list[int]) -> list[int]:
    """``prompt_ids`` starting with the tokenizer's BOS token (unchanged if it has none or already starts so)."""
    bos = tokenizer.bos_token_id
    return prompt_ids if bos is None or prompt_ids[:1] == [bos] else [bos] + prompt_ids


def full_text(tokenizer, prompt: str, completion: str) -> str:
    """A standard example's prompt + completion + EOS (no second EOS when the completion has one)."""
    eos = tokenizer.eos_token
    return prompt + (completion if completion.endswith(eos) else completion + eos)


class PreTokenized:
    """``tokenizer`` with the ids of ``texts`` encoded up front in one batched call (a fast tokenizer encodes a
    batch in parallel and without per-call overhead: 16,000 single calls cost ~0.9 s on the world's pairs).
    Calls for those texts, without options, return the stored ids; anything else goes to the tokenizer."""

    def __init__(self, tokenizer, texts):
        self._tokenizer = tokenizer
        unique = list(dict.fromkeys(texts))
        self._ids = dict(zip(unique, tokenizer(unique)["input_ids"])) if unique else {}

    def __call__(self, text, **kwargs):
        if kwargs or not isinstance(text, str) or text not in self._ids:
            return self._tokenizer(text, **kwargs)
        return {"input_ids": self._ids[text]}

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def standard_texts(tokenizer, row: dict) -> list[str]:
    """The strings ``tokenize_completion`` encodes for a standard (string) row of any batch kind."""
    prompt = row.get("prompt")
    if not isinstance(prompt, str):
        return []
    texts = [prompt]
    for key in ("completion", "chosen", "rejected"):
        if isinstance(row.get(key), str):
            texts.append(full_text(tokenizer, prompt, row[key]))
    return texts


def tokenize_completion(tokenizer, prompt, completion, prepend_bos: bool = False) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) for one prompt/completion in TRL's way (see module docstring)."""
    if isinstance(prompt, list) and isinstance(completion, str):  # a sampled reply to a chat prompt
        completion = [{"role": "assistant", "content": completion}]
    if is_messages(prompt) or is_messages(completion):
        prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
        full_ids = _ids(tokenizer, prompt + completion)
    else:
        prompt_ids = _ids(tokenizer, prompt)
        full_ids = _ids(tokenizer, full_text(tokenizer, prompt, completion))
    split = common_prefix_length(prompt_ids, full_ids)
    return (_with_bos(tokenizer, full_ids[:split]) if prepend_bos else full_ids[:split]), full_ids[split:]


def tokenize_pair(tokenizer, prompt, chosen, rejected, prepend_bos: bool = False
                  ) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids): the prompt is the prefix shared by both tokenizations."""
    prompt_c, chosen_ids = tokenize_completion(tokenizer, prompt, chosen, prepend_bos)
    prompt_r, rejected_ids = tokenize_completion(tokenizer, prompt, rejected, prepend_bos)
    split = min(len(prompt_c), len(prompt_r))
    # If one side's BPE merged across the boundary further back, move that prompt tail into the completion.
    return prompt_c[:split], prompt_c[split:] + chosen_ids, prompt_r[split:] + rejected_ids


def tokenize_prompt(tokenizer, prompt) -> list[int]:
    """Prompt ids ready for generation (chat template with the generation prompt for messages)."""
    if isinstance(prompt, list):
        return _ids(tokenizer, prompt, add_generation_prompt=True)
    return _ids(tokenizer, prompt)
