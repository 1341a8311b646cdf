"""Chat templates a model config can name (``model.chat_template``), for tokenizers that ship none or one
that does not suit training.

A base model trained on conversational rows needs a template that turns messages into the text it is
trained on, and the template must only use tokens the model already has (new tokens would need new,
untrained embedding rows). Each template below says which tokens it needs and which token ends a turn:
``model.eos_token`` must be that token, so that sampling stops where a reply ends.

- ``chatml``: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message, no default system turn. For base
  models whose vocabulary has the ChatML tokens (SmolLM2, Qwen2.5): their instruct siblings use it, so a
  base model fine-tuned with it speaks the family's format. Ends a turn with ``<|im_end|>``.
- ``llama3``: Llama 3's header format, ``<|start_header_id|>role<|end_header_id|>\\n\\ncontent<|eot_id|>``
  after ``<|begin_of_text|>``, with the system turn that Llama 3.2's own template writes for a chat that
  has none (its knowledge cutoff and a date) at a fixed date. The template Llama 3.2 ships writes
  *today's* date into every prompt (``strftime_now``), so the same row would tokenize differently from one
  day to the next and no cached stage or comparison could be reproduced. Ends a turn with ``<|eot_id|>``.
- ``human_assistant``: Anthropic's HH transcript format, ``\\n\\nHuman: ...\\n\\nAssistant: ...``, plain
  text that any vocabulary can write (GPT-2, Pythia: no chat tokens), the format the DPO paper trained
  Pythia on. The final assistant turn ends with the tokenizer's EOS.

``HH_TRANSCRIPT`` (not a model config's choice) is that format without the final EOS: how a reward model
that has no template of its own reads a conversation, as GPT-2 reward models trained on raw HH text do.
"""

from __future__ import annotations

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The date Llama 3.2's template writes when it is given none and cannot read the clock.
LLAMA3_DATE = "26 Jul 2024"
LLAMA3 = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{ 'Cutting Knowledge Date: December 2023\\nToday Date: " + LLAMA3_DATE + "\\n\\n' }}"
    "{{ system + '<|eot_id|>' }}"
    "{% for message in turns %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

HUMAN_ASSISTANT = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '\\n\\nHuman: ' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '\\n\\nAssistant: ' + message['content'] }}"
    "{% if loop.last %}{{ eos_token }}{% endif %}"
    "{% elif message['role'] == 'system' %}{{ message['content'] }}"
    "{% else %}{{ raise_exception('human_assistant: unknown role ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\\n\\nAssistant:' }}{% endif %}"
)

# How a reward model without a chat template reads a conversation (zoo.builders.reward_model_scorer): the raw
# HH-RLHF text that GPT-2 reward models on HH were trained on, with no EOS after the last reply.
HH_TRANSCRIPT = HUMAN_ASSISTANT.replace("{% if loop.last %}{{ eos_token }}{% endif %}", "")

# name -> (template, the token that ends an assistant turn, or None for the tokenizer's own EOS)
TEMPLATES = {
    "chatml": (CHATML, "<|im_end|>"),
    "llama3": (LLAMA3, "<|eot_id|>"),
    "human_assistant": (HUMAN_ASSISTANT, None),
}


def chat_template(name: str) -> tuple[str, str | None]:
    """(Jinja template, end-of-turn token or None) of a named template; an unknown name is an error
    listing the names."""
    if name not in TEMPLATES:
        raise ValueError(f"model.chat_template={name!r} is not one of zoo's templates ({', '.join(TEMPLATES)}); "
                         f"null keeps the tokenizer's own")
    return TEMPLATES[name]
