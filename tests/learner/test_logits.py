"""Chunked token logprobs / entropy: equal to the plain log_softmax (values and gradients) for every chunk
size, and they never save a (B*T, V) fp32 tensor for the backward pass."""

import pytest
import torch

from winnow.learner.logits import logprobs_from_hidden, token_logprobs_and_entropy


def _reference(logits, targets, temperature=1.0):
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return lp, ent


def _data(b=3, t=5, v=37, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(b, t, v, generator=g)).to(dtype)
    targets = torch.randint(0, v, (b, t), generator=g)
    return logits, targets


@pytest.mark.parametrize("chunk", [1, 7, 15, 1024])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_matches_log_softmax_values_and_gradients(chunk, temperature):
    logits, targets = _data()
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    lp, ent = token_logprobs_and_entropy(x1, targets, chunk_size=chunk, temperature=temperature)
    lp_r, ent_r = _reference(x2, targets, temperature)
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32 and lp.shape == (3, 5)
    assert torch.allclose(lp, lp_r, atol=1e-5) and torch.allclose(ent, ent_r, atol=1e-5)
    g = torch.Generator().manual_seed(9)
    w_lp, w_ent = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    (g1,) = torch.autograd.grad((lp * w_lp + ent * w_ent).sum(), x1)
    (g2,) = torch.autograd.grad((lp_r * w_lp + ent_r * w_ent).sum(), x2)
    assert g1.dtype == logits.dtype
    assert torch.allclose(g1, g2, atol=1e-5)


def test_chunk_sizes_give_identical_results():
    logits, targets = _data(dtype=torch.float32)
    outs = []
    for chunk in (1, 7, 15):
        x = logits.clone().requires_grad_(True)
        lp, ent = token_logprobs_and_entropy(x, targets, chunk_size=chunk)
        (g,) = torch.autograd.grad((lp + ent).sum(), x)
        outs.append((lp, ent, g))
    for lp, ent, g in outs[1:]:
        assert torch.allclose(lp, outs[0][0], atol=1e-6)
        assert torch.allclose(ent, outs[0][1], atol=1e-6)
        assert torch.allclose(g, outs[0][2], atol=1e-6)


def test_bf16_logits_are_computed_in_fp32():
    logits, targets = _data(dtype=torch.bfloat16)
    x = logits.clone().requires_grad_(True)
    lp, ent = token_logprobs_and_entropy(x, targets, chunk_size=4)
    lp_r, ent_r = _reference(logits, targets)  # reference upcasts the same bf16 values
    assert lp.dtype == torch.float32 and torch.allclose(lp, lp_r, atol=1e-5)
    (g,) = torch.autograd.grad(lp.sum(), x)
    assert g.dtype == torch.bfloat16


def test_without_entropy_and_with_masked_vocab():
    logits, targets = _data(dtype=torch.float32)
    lp, ent = token_logprobs_and_entropy(logits, targets, with_entropy=False)
    assert ent is None and torch.allclose(lp, _reference(logits, targets)[0], atol=1e-5)
    # -inf logits (masked vocabulary) leave the entropy and its gradient finite
    x = logits.clone()
    x[..., -3:] = float("-inf")
    targets = targets.clamp(max=logits.shape[-1] - 4)
    x.requires_grad_(True)
    lp, ent = token_logprobs_and_entropy(x, targets, chunk_size=4)
    assert torch.isfinite(ent).all() and torch.isfinite(lp).all()
    (g,) = torch.autograd.grad((lp + ent).sum(), x)
    assert torch.isfinite(g).all() and (g[..., -3:] == 0).all()
    lp_r, ent_r = _reference(logits[..., :-3], targets)
    assert torch.allclose(ent, ent_r, atol=1e-5) and torch.allclose(lp, lp_r, atol=1e-5)


def _saved_bytes(fn):
    """Bytes of every tensor autograd saves for backward while running ``fn`` (inputs counted too)."""
    seen = []

    def pack(t):
        seen.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen)


def test_large_vocab_saves_no_full_fp32_tensor():
    b, t, v = 2, 64, 20_000
    logits = torch.randn(b, t, v, dtype=torch.bfloat16, requires_grad=True)
    targets = torch.randint(0, v, (b, t))
    full_fp32 = b * t * v * 4  # 10.2 MB
    ours = _saved_bytes(lambda: token_logprobs_and_entropy(logits, targets, chunk_size=16))
    naive = _saved_bytes(lambda: _reference(logits, targets))
    # ours: the bf16 logits themselves (B*T*V*2) + targets + lse + entropy (a few B*T vectors)
    assert ours <= b * t * v * 2 + 64 * b * t
    assert naive >= full_fp32  # the plain log_softmax keeps (at least) one full fp32 copy


def test_logprobs_from_hidden_matches_full_matmul():
    g = torch.Generator().manual_seed(4)
    b, t, h, v = 2, 6, 8, 29
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    targets = torch.randint(0, v, (b, t), generator=g)
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, ent = logprobs_from_hidden(h1, w1, targets, chunk_size=5, temperature=0.8)
    lp_r, ent_r = _reference(h2 @ w2.T, targets, 0.8)
    assert torch.allclose(lp, lp_r, atol=1e-5) and torch.allclose(ent, ent_r, atol=1e-5)
    loss, loss_r = (lp - 0.3 * ent).sum(), (lp_r - 0.3 * ent_r).sum()
    g1 = torch.autograd.grad(loss, [h1, w1])
    g2 = torch.autograd.grad(loss_r, [h2, w2])
    for a, r in zip(g1, g2, strict=True):
        assert torch.allclose(a, r, atol=1e-4)
    # the (B*T, V) logits are never saved: only hidden, weight, targets and two vectors per row
    saved = _saved_bytes(lambda: logprobs_from_hidden(h1, w1, targets, chunk_size=5))
    assert saved < hidden.numel() * 8 + weight.numel() * 8 + 64 * b * t


def test_argument_errors():
    logits, targets = _data()
    with pytest.raises(ValueError, match="targets shape"):
        token_logprobs_and_entropy(logits, targets[:, :2])
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs_and_entropy(logits, targets, chunk_size=0)
    with pytest.raises(ValueError, match="lm_head_weight"):
        logprobs_from_hidden(torch.zeros(1, 2, 4), torch.zeros(5, 3), torch.zeros(1, 2, dtype=torch.long))
