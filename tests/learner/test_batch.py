"""collate(): layout, padding, masks and validation; the padded response-only forward matches unpadded."""

from __future__ import annotations

import pytest
import torch

from winnow.learner.batch import GroupData, SampleData, collate
from winnow.learner.model import response_logits

from .conftest import CORRECT, WRONG, current_logprobs, make_groups

PAD = 0


def _group(
    request_id="req-1", prompt=(5, 6, 7), responses=((8, 9), (10,)), statuses=(CORRECT, WRONG), lp=None
):
    samples = []
    for r, st in zip(responses, statuses, strict=True):
        samples.append(
            SampleData(
                response_token_ids=list(r),
                behaviour_logprobs=lp if lp is not None else [-1.0] * len(r),
                policy_versions=[3] * len(r),
                status=st,
            )
        )
    return GroupData(prompt_id="p", request_id=request_id, prompt_token_ids=list(prompt), samples=samples)


def test_layout_left_padded_prompt_right_padded_response():
    g1 = _group("a", prompt=(5, 6, 7), responses=((8, 9), (10,)))
    g2 = _group("b", prompt=(11,), responses=((12, 13, 14), (15,)), statuses=(WRONG, WRONG))
    b = collate([g1, g2], pad_id=PAD)
    # G=2, n=2 -> B=4; P = longest prompt = 3, T = longest response = 3, L = 6
    assert b.input_ids.shape == (4, 6) and b.targets.shape == (4, 3)
    assert b.prompt_width == 3 and b.num_groups == 2 and b.group_size == 2
    assert b.input_ids.tolist() == [
        [5, 6, 7, 8, 9, PAD],
        [5, 6, 7, 10, PAD, PAD],
        [PAD, PAD, 11, 12, 13, 14],
        [PAD, PAD, 11, 15, PAD, PAD],
    ]
    assert b.attention_mask.tolist() == [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 0, 0],
    ]
    # positions count real tokens only: row 2 starts at 0 on its first real token (column 2)
    assert b.position_ids[2].tolist() == [0, 0, 0, 1, 2, 3]
    assert b.position_ids[0].tolist()[:5] == [0, 1, 2, 3, 4]
    assert b.targets.tolist() == [[8, 9, PAD], [10, PAD, PAD], [12, 13, 14], [15, PAD, PAD]]
    assert b.response_mask.sum(dim=1).tolist() == [2, 1, 3, 1]
    assert b.behaviour_logprobs.tolist() == [[-1, -1, 0], [-1, 0, 0], [-1, -1, -1], [-1, 0, 0]]
    assert b.policy_versions.tolist() == [[3, 3, 0], [3, 0, 0], [3, 3, 3], [3, 0, 0]]
    assert b.statuses.tolist() == [[CORRECT, WRONG], [WRONG, WRONG]]
    assert b.group_index.tolist() == [0, 0, 1, 1]
    assert b.request_ids == ["a", "b"] and b.group_policy_versions.tolist() == [3, 3]
    assert b.num_response_tokens == 7


def test_rows_trims_padding_to_the_subset():
    g1 = _group("a", prompt=(5, 6, 7), responses=((8, 9), (10,)))
    g2 = _group("b", prompt=(11,), responses=((12, 13, 14), (15,)))
    b = collate([g1, g2], pad_id=PAD)
    mb = b.rows([3, 1])  # prompts 1 and 3 tokens, responses 1 and 1 token
    assert mb.prompt_width == 3 and mb.response_width == 1
    assert mb.input_ids.tolist() == [[PAD, PAD, 11, 15], [5, 6, 7, 10]]
    assert mb.position_ids.tolist() == [[0, 0, 0, 1], [0, 1, 2, 3]]
    assert mb.targets.tolist() == [[15], [10]]


def test_single_policy_version_broadcasts_and_group_version_is_min():
    g = _group(responses=((8, 9, 10), (11,)))
    g.samples[0].policy_versions = [4]  # one entry for the whole response
    g.samples[1].policy_versions = [2]
    b = collate([g], pad_id=PAD)
    assert b.policy_versions.tolist() == [[4, 4, 4], [2, 0, 0]]
    assert g.policy_version == 2


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g: g.samples[1].behaviour_logprobs.append(-1.0), "behaviour_logprobs has 2 entries"),
        (lambda g: g.samples[0].policy_versions.append(1), "policy_versions has 3 entries"),
        (lambda g: g.samples.pop(), "has 1 samples, expected n=2"),
        (lambda g: g.prompt_token_ids.clear(), "prompt_token_ids is empty"),
        (lambda g: g.samples[0].behaviour_logprobs.__setitem__(0, float("nan")), "finite and <= 0"),
        (lambda g: g.samples[0].behaviour_logprobs.__setitem__(0, 0.5), "finite and <= 0"),
    ],
)
def test_validation_errors_name_the_request_id(mutate, message):
    good = _group("ok-1")
    bad = _group("bad-req-7")
    mutate(bad)
    with pytest.raises(ValueError, match="bad-req-7") as e:
        collate([good, bad], pad_id=PAD)
    assert message in str(e.value)


def test_empty_batch_and_empty_group_rejected():
    with pytest.raises(ValueError, match="no groups"):
        collate([], pad_id=PAD)
    g = GroupData(prompt_id="p", request_id="lonely", prompt_token_ids=[1], samples=[])
    with pytest.raises(ValueError, match="lonely"):
        collate([g], pad_id=PAD)


def test_padded_response_forward_matches_each_sequence_alone(tiny):
    """The batched, padded, response-only forward gives each sequence's own log-probs."""
    model, _ = tiny
    model.eval()
    groups = make_groups([[CORRECT, WRONG, WRONG], [WRONG, CORRECT, CORRECT]], seed=3)
    b = collate(groups, pad_id=PAD)
    with torch.no_grad():
        logits = response_logits(
            model, b.input_ids, b.attention_mask, b.position_ids, b.prompt_width, b.response_width
        )
        lp = torch.log_softmax(logits.float(), -1).gather(-1, b.targets[..., None])[..., 0]
    for gi, g in enumerate(groups):
        for si, expect in enumerate(current_logprobs(model, g)):
            row = gi * len(g.samples) + si
            got = lp[row, : len(expect)]
            torch.testing.assert_close(got, torch.tensor(expect), atol=1e-5, rtol=1e-5)


def test_tiny_model_directory_round_trip(tmp_path):
    """save_tiny writes a normal HF directory that load_causal_lm loads; weights and tokenizer survive."""
    from winnow.learner.model import load_causal_lm, resolve_device
    from winnow.learner.tiny import build_tiny_model_and_tokenizer, save_tiny

    path = save_tiny(tmp_path / "tiny", seed=3)
    model, tok = load_causal_lm(path)
    ref_model, ref_tok = build_tiny_model_and_tokenizer(seed=3)
    assert next(model.parameters()).dtype == torch.float32 and model.training  # CPU default: fp32
    assert resolve_device("auto").type == "cpu"
    for (k, p), q in zip(ref_model.named_parameters(), model.parameters(), strict=True):
        assert torch.equal(p, q), k
    text = tok.apply_chat_template(
        [{"role": "user", "content": "7 3"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\n7 3<|im_end|>\n<|im_start|>assistant\n"
    assert tok(text)["input_ids"] == ref_tok(text)["input_ids"]
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    # digits are single tokens
    assert all(len(tok(str(d), add_special_tokens=False)["input_ids"]) == 1 for d in range(10))
    assert len(tok("12345")["input_ids"]) == 5
    with pytest.raises(ValueError, match="dtype"):
        load_causal_lm(path, dtype="float8")


def _scored_group(prompt_tokens: int, response_tokens: int = 2, samples: int = 2):
    from winnow.v1 import messages_pb2

    return messages_pb2.ScoredGroup(
        prompt_id="p/1", request_id="run-1-0", generator_id="gen-x", policy_version=3,
        prompt_token_ids=[7] * prompt_tokens,
        samples=[messages_pb2.Sample(response_token_ids=[8] * response_tokens, behaviour_logprobs=[-1.0] * response_tokens,
                                     status=CORRECT) for _ in range(samples)],
    )


def test_a_received_group_with_a_too_long_prompt_is_refused_before_anything_is_allocated(monkeypatch):
    """Issue 22 item 6: one group with a 30,000-token prompt made the learner allocate 16.2 GB at collate time,
    again on every resume (max_prompt_tokens was checked only at release). group_from_proto refuses it with a
    ValueError the learner dead-letters, and checks the counts before copying a single token out of the message."""
    from winnow.learner import batch

    ok = batch.group_from_proto(_scored_group(4096), 2, max_prompt_tokens=4096)
    assert len(ok.prompt_token_ids) == 4096
    with pytest.raises(ValueError, match=r"'run-1-0' from gen-x: 30000 prompt tokens, more than the 4096 allowed"):
        batch.group_from_proto(_scored_group(30_000), 2, max_prompt_tokens=4096)
    # every count is checked on the message first: no GroupData is built for an oversized group
    built = []
    monkeypatch.setattr(batch, "GroupData", lambda **kw: built.append(kw))
    for bad, kw in [(_scored_group(30_000), {"max_prompt_tokens": 4096}),
                    (_scored_group(4, response_tokens=5000), {"max_response_tokens": 256}),
                    (_scored_group(4, samples=1_000), {})]:
        with pytest.raises(ValueError, match="run-1-0"):
            batch.group_from_proto(bad, 2, **kw)
    assert built == []
