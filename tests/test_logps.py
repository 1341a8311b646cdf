"""Label log-probs without the full-vocabulary logits (``zoo.models.token_logps``): the chunked path gives
the numbers and the gradients of ``log_softmax(model(x).logits)`` gathered at the labels, at the positions
asked for, with and without LoRA, and only those positions reach the LM head."""

import pytest
import torch

from zoo import models
from zoo.models import apply_lora, load_causal_lm, sequence_logps, token_logps
from zoo.world import paths


def reference_logps(model, input_ids, attention_mask, temperature=1.0):
    """The textbook computation: full logits, log-softmax, gather."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    input_ids = torch.randint(3, 1000, (3, 11))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0  # right padding
    positions = torch.zeros(3, 10)
    positions[:, 4:] = 1  # the "completion"
    positions[1, 7:] = 0  # no label past the padding
    return input_ids, attention_mask, positions


@pytest.mark.parametrize("lora", [False, True])
def test_chunked_logps_equal_the_full_log_softmax_with_gradients(batch, lora, monkeypatch):
    """Chunks of 4 positions (15 wanted positions -> 4 chunks, the last one partial); temperature 0.7."""
    monkeypatch.setattr(models, "LOGITS_CHUNK", 4)
    input_ids, attention_mask, positions = batch
    model = load_causal_lm(str(paths.MODEL))
    if lora:
        model = apply_lora(model, r=4, alpha=8, dropout=0.0, target_modules="all-linear")
        for name, p in model.named_parameters():  # LoRA's B starts at zero: make the adapters matter
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
    assert models._trunk_and_head(model) is not None  # the chunked path, not the fallback
    fast = token_logps(model, input_ids, attention_mask, 0.7, positions)
    slow = reference_logps(model, input_ids, attention_mask, 0.7) * positions
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)
    assert fast[positions == 0].abs().max() == 0
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads_fast = torch.autograd.grad(fast.sum(), trainable)
    grads_slow = torch.autograd.grad(slow.sum(), trainable)
    for a, b in zip(grads_fast, grads_slow):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)  # float sums in another order


def test_only_the_asked_positions_reach_the_lm_head(batch):
    input_ids, attention_mask, positions = batch
    model = load_causal_lm(str(paths.MODEL))
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    with torch.no_grad():
        token_logps(model, input_ids, attention_mask, positions=positions)
    assert sum(rows) == int(positions.sum()) == 15  # not 3 x 10 (and not the 3 x 11 of a full forward)


@pytest.mark.parametrize("separable", [True, False])
def test_last_logits_are_the_full_forwards_last_position_and_only_it_reaches_the_head(separable, monkeypatch):
    """Left-padded rows with positions counted from each row's first real token (the judge's input): the
    (N, V) logits equal the full forward's at the last position; the head sees N rows, not N x L. A model
    whose head cannot be called apart takes the full forward."""
    from zoo.models import last_logits

    torch.manual_seed(0)
    input_ids = torch.randint(3, 1000, (3, 9))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :4] = 0  # left padding
    attention_mask[2, :1] = 0
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    model = load_causal_lm(str(paths.MODEL)).eval()
    if not separable:
        monkeypatch.setattr(models, "_trunk_and_head", lambda model: None)
    rows = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:-1].numel()))
    with torch.no_grad():
        fast = last_logits(model, input_ids, attention_mask, positions)
        expected_rows = [3] if separable else [3 * 9]
        assert rows == expected_rows
        full = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits[:, -1]
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)


def test_sequence_logps_reads_prompt_tokens_only_when_asked(batch):
    """all_tokens=True adds every real token's log-prob (ORPO's NLL over the prompt), the same numbers."""
    input_ids, attention_mask, positions = batch
    completion_mask = torch.cat([torch.zeros(3, 1), positions], dim=1)  # collated masks are (N, T)
    model = load_causal_lm(str(paths.MODEL))
    b = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    with torch.no_grad():
        completion_only, everything = sequence_logps(model, b), sequence_logps(model, b, all_tokens=True)
        full = reference_logps(model, input_ids, attention_mask)
    assert completion_only.all_token_logps is None
    torch.testing.assert_close(completion_only.token_logps, everything.token_logps)
    torch.testing.assert_close(everything.all_token_logps, full * attention_mask[:, 1:], atol=2e-5, rtol=1e-5)


def test_pack_rows_fits_whole_sequences_first_fit_decreasing():
    from zoo.models import pack_rows

    rows = pack_rows([5, 9, 3, 7, 2], width=10)
    assert sorted(i for row in rows for i in row) == [0, 1, 2, 3, 4]  # every sequence once, whole
    assert all(sum([5, 9, 3, 7, 2][i] for i in row) <= 10 for row in rows)
    assert rows == [[1], [3, 2], [0, 4]]  # 9 | 7+3 | 5+2


def test_packing_plan_picks_the_cheapest_width_attention_counted():
    """Cost of R rows of width W: R * W * (1 + W / 200). Lengths 10, 10, 5, 5: width 10 gives 10 | 10 | 5+5,
    3 rows, cost 30 * 1.05 = 31.5; width 15 gives 10+5 | 10+5, cost 30 * 1.075 = 32.25; width 20 gives
    10+10 | 5+5, cost 40 * 1.1 = 44: width 10 wins. Lengths 8, 7, 3, 2 (longest 8): width 10 gives 8+2 |
    7+3, 2 rows, cost 20 * 1.05 = 21, below width 8's 8 | 7 | 3+2 (24 * 1.04 = 24.96): the wider row wins."""
    from zoo.models import packing_plan

    assert packing_plan((10, 10, 5, 5)) == (10, ((0,), (1,), (2, 3)))
    width, rows = packing_plan((8, 7, 3, 2))
    assert (width, rows) == (10, ((0, 3), (1, 2)))
    lengths = (37, 12, 30, 29, 5, 18, 40, 22, 9, 33)
    width, rows = packing_plan(lengths)
    assert 40 <= width <= 80 and sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= width for row in rows)


@pytest.mark.parametrize("family", ["smollm2-135m", "qwen2.5-0.5b", "pythia-160m", "llama-3.2-1b", "gpt2"])
def test_the_padding_free_forward_equals_the_padded_one(family, tmp_path):
    """Sequences packed into rows (position_ids restarting) give each real token the hidden state it has in
    the padded batch, for every hub architecture zoo ships a config for."""
    from hub_models import HUB_MODELS, write_model

    from zoo.models import _packed_hidden, _trunk_and_head, packing_works

    model = load_causal_lm(str(write_model(HUB_MODELS[family], tmp_path / family)))
    trunk, _ = _trunk_and_head(model)
    assert packing_works(trunk)
    ids = torch.randint(3, 900, (6, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros_like(ids)
    for i, n in enumerate([20, 4, 9, 13, 7, 3]):
        mask[i, :n] = 1
    with torch.no_grad():
        padded = trunk(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        packed = _packed_hidden(trunk, ids, mask)
    real = mask.bool()
    torch.testing.assert_close(packed[real], padded[real], atol=1e-4, rtol=1e-4)


def test_a_model_that_ignores_position_restarts_keeps_the_padded_forward():
    """A trunk that reads packed rows as one sequence (no boundaries) fails the once-per-model check."""
    from zoo.models import packing_works

    class OneSequence(torch.nn.Module):  # attends across the whole row: what packing must never meet
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)

    model = load_causal_lm(str(paths.MODEL))
    assert not packing_works(OneSequence(model.model))


def test_rows_group_by_identical_prompts_only():
    from zoo.models import shared_prefix_groups

    ids = torch.tensor([[5, 6, 7, 8, 0], [5, 6, 9, 9, 9], [5, 6, 7, 1, 0], [4, 6, 7, 2, 0], [5, 6, 7, 0, 0]])
    lengths = [4, 5, 4, 4, 3]
    # rows 0, 2 and 4 start with 5 6 7; row 1 with 5 6 9 (another prompt); row 3 with 4 6 7; row 4's prompt
    # is all of it (nothing of its own past it), so it shares nothing
    assert shared_prefix_groups(ids, lengths, [3, 3, 3, 3, 3]) == [[0, 2], [1], [3], [4]]
    assert shared_prefix_groups(ids, lengths, [2, 2, 2, 2, 2]) == [[0, 1, 2, 4], [3]]  # "5 6" is shared by four
    assert shared_prefix_groups(ids, lengths, [0] * 5) == [[0], [1], [2], [3], [4]]


@pytest.mark.parametrize("all_tokens", [False, True])
def test_a_shared_prompt_is_computed_once_with_the_same_logps_and_gradients(all_tokens):
    """A paired batch (chosen rows 0-1, rejected rows 2-3, each pair one prompt): the prompt's states are
    computed once and read by both rows, and the log-probs and their gradients equal the padded full
    forward's, the prompt's last position predicting each row's own first reply token included."""
    from zoo.models import _packed_hidden, _packed_trunk, _trunk_and_head, prompt_lengths, prompt_sharing_works

    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 1000, (6,), generator=generator).tolist(), torch.randint(3, 1000, (4,), generator=generator).tolist()]
    replies = [torch.randint(3, 1000, (k,), generator=generator).tolist() for k in (5, 3, 7, 2)]  # chosen 0-1, rejected 0-1
    rows = [prompts[0] + replies[0], prompts[1] + replies[1], prompts[0] + replies[2], prompts[1] + replies[3]]
    width = max(map(len, rows))
    input_ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attention_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    completion_mask = torch.zeros_like(input_ids)
    for i, p in enumerate([6, 4, 6, 4]):
        completion_mask[i, p:len(rows[i])] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    assert prompt_lengths(batch) == [6, 4, 6, 4]

    model = load_causal_lm(str(paths.MODEL))
    trunk, _ = _trunk_and_head(model)
    with torch.no_grad():
        _, index = _packed_trunk(trunk, input_ids, attention_mask, prompt_lengths(batch))
    assert torch.equal(index[2, :6], index[0, :6]) and torch.equal(index[3, :4], index[1, :4])  # one prompt state
    assert len(set(index[index >= 0].tolist())) == sum(map(len, rows)) - 6 - 4  # every other position its own
    with torch.no_grad():
        shared = _packed_hidden(trunk, input_ids, attention_mask, prompt_lengths(batch))
        padded = trunk(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    real = attention_mask.bool()
    torch.testing.assert_close(shared[real], padded[real], atol=1e-4, rtol=1e-4)
    assert prompt_sharing_works(trunk)  # so sequence_logps below takes this path, not a fallback

    out = sequence_logps(model, batch, all_tokens=all_tokens)
    full = reference_logps(model, input_ids, attention_mask)
    fast = out.all_token_logps if all_tokens else out.token_logps
    slow = full * (attention_mask if all_tokens else completion_mask)[:, 1:]
    torch.testing.assert_close(fast, slow, atol=2e-5, rtol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    weights = torch.rand(slow.shape, generator=generator)  # every position's gradient counts, differently
    for a, b in zip(torch.autograd.grad((fast * weights).sum(), params), torch.autograd.grad((slow * weights).sum(), params)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


def test_a_model_without_4d_masks_packs_without_sharing(monkeypatch):
    """A trunk that takes no custom 4D mask (flash-attention's contract) fails the sharing check but keeps the
    position-restart packing; a batch whose rows share prompts then packs them one by one, same log-probs."""
    from zoo.models import packing_works, prompt_sharing_works

    class No4DMask(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
            if attention_mask is not None and attention_mask.dim() == 4:
                raise ValueError("no 4D masks here")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              use_cache=False)

    model = load_causal_lm(str(paths.MODEL))
    assert packing_works(No4DMask(model.model)) and not prompt_sharing_works(No4DMask(model.model))

    monkeypatch.setattr(models, "prompt_sharing_works", lambda trunk: False)  # what such a model gets
    monkeypatch.setattr(models, "_packed_trunk", _no_4d_mask(models._packed_trunk))
    ids = torch.randint(3, 1000, (4, 9), generator=torch.Generator().manual_seed(2))
    ids[2:, :5] = ids[:2, :5]  # rows 2-3 share rows 0-1's 5-token prompts, with other replies
    completion_mask = torch.zeros_like(ids)
    completion_mask[:, 5:] = 1
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": completion_mask}
    with torch.no_grad():
        out = sequence_logps(model, batch)
        full = reference_logps(model, ids, batch["attention_mask"]) * completion_mask[:, 1:]
    torch.testing.assert_close(out.token_logps, full, atol=2e-5, rtol=1e-5)


def _no_4d_mask(packed_trunk):
    """``_packed_trunk`` that fails if it is asked to share (the only case that passes a 4D mask)."""
    def wrapped(trunk, input_ids, attention_mask, prefix_lengths=None):
        assert prefix_lengths is None
        return packed_trunk(trunk, input_ids, attention_mask, prefix_lengths)
    return wrapped
