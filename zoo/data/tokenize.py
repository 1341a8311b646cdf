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

from trl.data_utils import common_prefix_length, is_conversational


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


def tokenize_completion(tokenizer, prompt, completion, prepend_bos: bool = False) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) for one prompt/completion in TRL's way (see module docstring)."""
    if isinstance(prompt, list) and isinstance(completion, str):  # a sampled reply to a chat prompt
        completion = [{"role": "assistant", "content": completion}]
    if is_conversational({"prompt": prompt, "completion": completion}):
        prompt_ids = _ids(tokenizer, prompt, add_generation_prompt=True)
        full_ids = _ids(tokenizer, prompt + completion)
    else:
        eos = tokenizer.eos_token
        prompt_ids = _ids(tokenizer, prompt)
        full_ids = _ids(tokenizer, prompt + (completion if completion.endswith(eos) else completion + eos))
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
