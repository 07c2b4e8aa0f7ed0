"""Advantages: hand-computed values, the loop reference, and the released code's edge cases."""

import math

import pytest
import torch

from winnow.learner.advantages import ADVANTAGE_KINDS, compute_advantages

R01 = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])


def test_raw_and_raft():
    assert torch.equal(compute_advantages(R01, "raw"), R01)
    pm = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    assert compute_advantages(pm, "raw").tolist() == [[1.0, -1.0, -1.0, 1.0]]
    # raft: max(r, 0): the same under {0,1} and {-1,+1}
    assert compute_advantages(pm, "raft").tolist() == [[1.0, 0.0, 0.0, 1.0]]
    assert torch.equal(compute_advantages(R01, "raft"), R01)


def test_mean_zero_hand_values():
    a = compute_advantages(R01, "mean_zero")
    # group 0: mean 1/4 -> [3/4, -1/4, -1/4, -1/4]; groups 1, 2: constant -> 0; group 3: mean 1/2 -> +-1/2
    assert a.tolist() == [[0.75, -0.25, -0.25, -0.25], [0.0] * 4, [0.0] * 4, [0.5, 0.5, -0.5, -0.5]]


def test_mean_std_hand_values_unbiased_and_population():
    a = compute_advantages(R01, "mean_std")  # unbiased, eps 1e-6 (the released GRPO)
    # group 0: mean 1/4; unbiased var = (9/16 + 3 * 1/16) / 3 = 12/48 = 1/4 -> std 1/2
    #          -> [0.75/0.5, -0.25/0.5, ...] = [1.5, -0.5, -0.5, -0.5] (up to eps)
    assert a[0].tolist() == pytest.approx([1.5, -0.5, -0.5, -0.5], abs=1e-5)
    # all-correct / all-wrong groups: std 0 -> (r - mean) / eps = 0 / 1e-6 = 0
    assert a[1].abs().sum() == 0 and a[2].abs().sum() == 0
    # group 3: mean 1/2, unbiased var = 4 * 1/4 / 3 = 1/3 -> A = 0.5 * sqrt(3) = 0.8660
    assert a[3].tolist() == pytest.approx([0.5 * math.sqrt(3)] * 2 + [-0.5 * math.sqrt(3)] * 2, abs=1e-5)
    p = compute_advantages(R01, "mean_std", std="population")
    # population var of group 3 = 1/4 -> std 1/2 -> A = +-1
    assert p[3].tolist() == pytest.approx([1.0, 1.0, -1.0, -1.0], abs=1e-5)
    # group 0 population var = 3/16 -> std = sqrt(3)/4 -> A0 = 0.75 / 0.4330 = sqrt(3)
    assert p[0, 0].item() == pytest.approx(math.sqrt(3), abs=1e-5)


def test_pm1_equals_01_after_normalisation():
    # mean_std is invariant to the affine map r -> 2r - 1 ({0,1} -> {-1,+1}) up to eps
    a01 = compute_advantages(R01, "mean_std")
    apm = compute_advantages(2 * R01 - 1, "mean_std")
    assert torch.allclose(a01, apm, atol=1e-5)
    # mean_zero scales by 2
    assert torch.allclose(2 * compute_advantages(R01, "mean_zero"), compute_advantages(2 * R01 - 1, "mean_zero"))


def test_keep_restricts_statistics_and_zeroes_the_rest():
    keep = torch.tensor([[True, True, False, False]])
    r = torch.tensor([[1.0, 0.0, 5.0, 5.0]])
    # stats over the first two: mean 1/2 -> [0.5, -0.5, 0, 0]
    assert compute_advantages(r, "mean_zero", keep=keep).tolist() == [[0.5, -0.5, 0.0, 0.0]]
    assert compute_advantages(r, "raw", keep=keep).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    # a single kept sample: unbiased std is defined as 0 (not NaN) -> advantage 0
    one = torch.tensor([[True, False, False, False]])
    assert compute_advantages(r, "mean_std", keep=one).tolist() == [[0.0] * 4]


def _loop(rewards, kind, std, eps, beta=0.7):
    out = []
    for row in rewards.tolist():
        n = len(row)
        z = sum(math.exp(x / beta) for x in row)
        mean = sum(row) / n
        var = sum((x - mean) ** 2 for x in row) / ((n - 1) if std == "unbiased" else n)
        sd = math.sqrt(var)
        out.append([
            {"raw": x, "raft": max(x, 0.0), "mean_zero": x - mean, "mean_std": (x - mean) / (sd + eps),
             "unit": 1.0, "snis": n * math.exp(x / beta) / z}[kind]
            for x in row
        ])
    return out


@pytest.mark.parametrize("kind", ADVANTAGE_KINDS)
@pytest.mark.parametrize("std", ["unbiased", "population"])
def test_vectorised_matches_loop(kind, std):
    g = torch.Generator().manual_seed(0)
    r = torch.randn(16, 5, generator=g, dtype=torch.float64)
    a = compute_advantages(r, kind, std=std, eps=1e-6, beta=0.7)
    for got, want in zip(a.tolist(), _loop(r, kind, std, 1e-6, beta=0.7), strict=True):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown advantage kind"):
        compute_advantages(R01, "gae")
    with pytest.raises(ValueError, match=r"must be \(G, n\)"):
        compute_advantages(R01.flatten(), "raw")
