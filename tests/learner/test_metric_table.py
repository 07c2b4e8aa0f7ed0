"""The learner's metric table (learner/metric_table.py): it covers every key a step emits, its reductions over
micro-batches and ranks are the declared ones (hand-checked, and over two real gloo ranks), and docs/metrics.md is
generated from it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from winnow.learner.algo import AlgoConfig
from winnow.learner.metric_table import LEARNER
from winnow.metric_defs import (
    Metric,
    by_key,
    combine_micro_batches,
    from_rank_vectors,
    rank_vectors,
    reduce_over_ranks,
    step_keys,
)

from .conftest import CORRECT, ERROR, WRONG, make_groups

ROOT = Path(__file__).resolve().parents[2]
ROWS = by_key(LEARNER)

# configurations that, together, make a step emit every optional key (beta-sampler, overlong, correction)
CONFIGS = {
    "grpo_kl": dict(preset="grpo", kl_coef=0.05, entropy_coef=0.01),
    "raft_beta": dict(preset="raft_beta", beta=0.5),
    "overlong": dict(preset="grpo", overlong={"drop_truncated": True, "soft_penalty": {"max_tokens": 6, "buffer": 2}}),
    "decoupled": dict(preset="grpo", decoupled=True),
}


def _trainer(model, algo: dict, mbs: int = 2):
    from winnow.learner.step import OptimConfig, Trainer

    algo = dict(algo)
    preset = algo.pop("preset")
    algo.setdefault("kl_coef", 0.0)
    algo.setdefault("entropy_coef", 0.0)
    return Trainer(model, AlgoConfig.from_preset(preset, **algo), OptimConfig(lr=1e-3, micro_batch_size=mbs),
                   pad_token_id=0)


def test_rows_are_consistent():
    keys = [m.key for m in LEARNER]
    assert len(keys) == len(set(keys)), "a key declared twice"
    families = [m.prom for m in LEARNER if m.prom and not m.series]
    assert len(families) == len(set(families)), "a Prometheus name declared twice"
    for m in LEARNER:
        if m.kind == "counter":
            assert m.prom and m.prom.endswith("_total"), m.key
        if m.series:  # one series of a labelled collector declared by a service row
            (family,) = [f for f in LEARNER if f.prom == m.prom and not f.series]
            assert family.source == "service" and len(family.labels) == len(m.series), m.key
        if m.micro == "mean" or m.ranks == "mean" and m.weight:
            assert m.weight is not None and ROWS[m.weight].ranks == "sum" and ROWS[m.weight].micro in ("sum", "once")
        if m.micro == "mean":
            assert ROWS[m.weight].micro == "sum", f"{m.key}: a micro-batch mean needs a per-micro-batch weight"
        if m.set_if:
            assert m.set_if in ROWS
        assert (m.ranks == "derived") == (m.derive is not None), m.key
        if m.source == "step":
            assert m.ranks != "rank0", f"{m.key}: a step metric needs a reduction over ranks"
        else:
            assert m.micro == "once" and m.ranks == "rank0", f"{m.key}: only step metrics are reduced"


def test_every_key_a_step_emits_has_a_row_and_every_step_row_is_emitted():
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    emitted: set[str] = set()
    for algo in CONFIGS.values():
        model, _ = build_tiny_model_and_tokenizer(seed=3)
        groups = make_groups([[CORRECT, WRONG, WRONG, CORRECT], [CORRECT, CORRECT, WRONG, WRONG]], seed=3,
                             response_lens=[[2, 7, 3, 8], [1, 5, 8, 2]])
        for g in groups:
            g.samples[1].finish_reason = "length"
        emitted |= set(_trainer(model, algo).train_step(groups).metrics)
    assert emitted <= step_keys(LEARNER), f"keys without a row: {sorted(emitted - step_keys(LEARNER))}"
    assert step_keys(LEARNER) <= emitted, f"rows no step emits: {sorted(step_keys(LEARNER) - emitted)}"


def test_a_new_key_without_a_row_is_an_error():
    from winnow.learner.step import StepResult

    with pytest.raises(ValueError, match=r"without a row in learner/metric_table.py: \['new_metric'\]"):
        StepResult.build(("trained",), {"loss": 1.0, "new_metric": 2.0})
    with pytest.raises(ValueError, match="no declared reduction"):
        rank_vectors(LEARNER, {"loss": 1.0, "new_metric": 2.0})
    with pytest.raises(ValueError, match="without a micro-batch row"):
        combine_micro_batches(LEARNER, [{"loss": 1.0, "ratio_max": 2.0}])  # ratio_max is once per step


def test_micro_batch_combination_by_hand():
    parts = [
        {"loss": 0.25, "pg_loss": 0.5, "kl": 0.0, "entropy": 1.0, "clip_frac": 0.5, "dual_clip_frac": 0.0,
         "is_weight_mean": 1.0, "is_trunc_frac": 0.0, "tokens": 2.0},
        {"loss": -0.75, "pg_loss": -1.0, "kl": 0.5, "entropy": 2.0, "clip_frac": 0.1, "dual_clip_frac": 0.25,
         "is_weight_mean": 0.5, "is_trunc_frac": 1.0, "tokens": 8.0},
    ]
    m = combine_micro_batches(LEARNER, parts)
    assert m["loss"] == -0.5  # 0.25 - 0.75: each term is already divided by the whole batch's normaliser
    assert m["entropy"] == 3.0 and m["kl"] == 0.5 and m["tokens"] == 10.0  # sums
    assert m["clip_frac"] == pytest.approx(0.18)  # (0.5 * 2 + 0.1 * 8) / 10 = 1.8 / 10
    assert m["is_weight_mean"] == pytest.approx(0.6)  # (1 * 2 + 0.5 * 8) / 10
    assert m["dual_clip_frac"] == 0.2 and m["is_trunc_frac"] == 0.8  # 0.25 * 8 / 10, 1 * 8 / 10
    empty = combine_micro_batches(LEARNER, [])  # a skipped step: nothing forwarded
    assert empty["loss"] == 0.0 and empty["tokens"] == 0.0 and empty["is_weight_mean"] == 1.0  # the empty value


def test_rank_reduction_by_hand():
    r0 = {"loss": 0.5, "pg_loss": 0.25, "tokens": 30.0, "groups": 1.0, "sequences": 3.0, "clip_frac": 0.1,
          "ratio_max": 1.5, "ratio_min": 0.75, "acceptance_rate": 0.25, "lr": 1e-3, "time_total_s": 2.0,
          "mismatch_tokens": 0.0, "mismatch_kl": 0.0, "groups_all_wrong": 1.0, "snis_ess_min_fraction": 0.5}
    r1 = {"loss": -0.25, "pg_loss": 0.75, "tokens": 10.0, "groups": 3.0, "sequences": 1.0, "clip_frac": 0.5,
          "ratio_max": 1.25, "ratio_min": 0.5, "acceptance_rate": 0.75, "lr": 1e-3, "time_total_s": 4.0,
          "mismatch_tokens": 5.0, "mismatch_kl": 0.02, "groups_all_wrong": 2.0, "snis_ess_min_fraction": 0.25}
    m = reduce_over_ranks(LEARNER, [r0, r1])
    assert m["loss"] == 0.25 and m["pg_loss"] == 1.0  # sums: each rank divided by the global normaliser
    assert m["tokens"] == 40.0 and m["groups"] == 4.0 and m["groups_all_wrong"] == 3.0  # counts add up
    assert m["clip_frac"] == pytest.approx(0.2)  # by tokens: (0.1 * 30 + 0.5 * 10) / 40 = 8 / 40
    assert m["acceptance_rate"] == pytest.approx(0.625)  # by groups: (0.25 * 1 + 0.75 * 3) / 4 = 2.5 / 4
    assert m["mismatch_kl"] == pytest.approx(0.02)  # by mismatch_tokens: rank 0 had none, (0 * 0 + 0.02 * 5) / 5
    assert m["ratio_max"] == 1.5 and m["time_total_s"] == 4.0  # max
    assert m["ratio_min"] == 0.5 and m["snis_ess_min_fraction"] == 0.25  # min
    assert m["lr"] == 1e-3  # same on every rank
    assert m["tokens_per_s"] == 10.0  # derived after the reduction: 40 tokens / 4 s (the slowest rank)
    # the same through the two vectors a Trainer all-reduces
    (k0, s0, x0), (_, s1, x1) = rank_vectors(LEARNER, r0), rank_vectors(LEARNER, r1)
    summed = [a + b for a, b in zip(s0, s1, strict=True)]
    maxed = [max(a, b) for a, b in zip(x0, x1, strict=True)]
    vec = from_rank_vectors(LEARNER, k0, summed, maxed, 2)
    assert vec == m


def test_a_key_only_some_ranks_have_reduces_over_those_ranks():
    """The beta-sampler's diagnostics exist only on ranks whose groups hold a valid sample: the vectors are the same
    length on every rank anyway (a collective over different lengths fails or hangs), and each key reduces over the
    ranks that have it, by its own weight there."""
    r0 = {"loss": 0.5, "groups": 1.0, "tokens": 8.0, "time_total_s": 1.0, "beta_acceptance_rate": 0.25,
          "snis_ess_min_fraction": 0.5, "ratio_max": 1.5}
    r1 = {"loss": 0.25, "groups": 3.0, "tokens": 8.0, "time_total_s": 2.0}
    (k0, s0, x0), (k1, s1, x1) = rank_vectors(LEARNER, r0), rank_vectors(LEARNER, r1)
    assert k0 == k1 and len(s0) == len(s1) and len(x0) == len(x1)
    m = reduce_over_ranks(LEARNER, [r0, r1])
    assert m["loss"] == 0.75 and m["groups"] == 4.0
    assert m["beta_acceptance_rate"] == 0.25  # rank 0's value, weighted by rank 0's groups only (not 1 / 4 of it)
    assert m["snis_ess_min_fraction"] == 0.5 and m["ratio_max"] == 1.5  # min / max over the ranks that have them
    assert "beta_is_weight_var" not in m  # no rank had it
    table = (Metric("x", "", ranks="mean"), Metric("n", "", ranks="sum"))
    assert reduce_over_ranks(table, [{"x": 1.0, "n": 1.0}, {"n": 2.0}]) == {"n": 3.0, "x": 1.0}


def test_a_mean_without_weight_divides_by_the_world_size():
    table = (Metric("x", "", ranks="mean"), Metric("n", "", ranks="sum"))
    assert reduce_over_ranks(table, [{"x": 1.0, "n": 1.0}, {"x": 4.0, "n": 2.0}]) == {"n": 3.0, "x": 2.5}


def _rank_main(rank: int, port: int, out: str, config: str = "grpo_kl", case: str = "split") -> None:
    """One of two gloo ranks: train its share (``split``: whole groups, as the sharded learner splits them;
    ``invalid_share``: rank 1 gets the group without a valid sample); rank 0 writes the reduced metrics."""
    import json

    import torch.distributed as dist

    from winnow.learner.distributed import group_tokens, split_by_tokens
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, _ = build_tiny_model_and_tokenizer(seed=21)
        t = _trainer(model, CONFIGS[config])
        t.dp_group = dist.group.WORLD
        if case == "split":
            groups = _two_rank_groups()
            mine = [groups[i] for i in split_by_tokens([group_tokens(g) for g in groups], 2)[rank]]
        else:
            groups = _invalid_share_groups()
            mine = groups[:2] if rank == 0 else groups[2:]
        m = t.train_step(mine).metrics
        if rank == 0:
            Path(out).write_text(json.dumps(m))
    finally:
        dist.destroy_process_group()


def _two_rank_groups():
    return make_groups([[CORRECT, WRONG, WRONG, WRONG], [CORRECT, CORRECT, WRONG, CORRECT],
                        [WRONG, CORRECT, WRONG, CORRECT]], seed=21)


@pytest.mark.slow
def test_two_gloo_ranks_reduce_as_declared(tmp_path):
    """Two processes each train a share of the batch; the reduced sums equal one process's whole batch (the loss
    terms use the global normaliser), counts add up, and the max/min are the whole batch's."""
    import json

    import torch.multiprocessing as mp

    from winnow.brokers import free_port
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, _ = build_tiny_model_and_tokenizer(seed=21)
    whole = _trainer(model, CONFIGS["grpo_kl"]).train_step(_two_rank_groups()).metrics
    out = tmp_path / "rank0.json"
    mp.start_processes(_rank_main, args=(free_port(), str(out)), nprocs=2, start_method="spawn", join=True)
    two = json.loads(out.read_text())
    for k in ("loss", "pg_loss", "kl", "entropy"):  # declared sum: before, pg_loss/kl/entropy were rank means
        assert two[k] == pytest.approx(whole[k], rel=1e-4, abs=1e-6), k
    for k in ("tokens", "tokens_total", "sequences", "groups", "groups_all_correct", "groups_all_wrong",
              "groups_mixed", "invalid_samples"):
        assert two[k] == whole[k], k
    for k in ("ratio_max", "ratio_min", "staleness_max", "clip_frac", "ratio_mean"):
        assert two[k] == pytest.approx(whole[k], rel=1e-4), k
    # by groups: exact for means over a fixed number of samples per group (no invalid samples here)
    for k in ("acceptance_rate", "kept_sample_fraction", "truncated_fraction", "response_length_mean"):
        assert two[k] == pytest.approx(whole[k], rel=1e-6), k
    assert two["tokens_per_s"] == pytest.approx(two["tokens"] / two["time_total_s"])


def _invalid_share_groups():
    return make_groups([[CORRECT, WRONG, WRONG, CORRECT], [CORRECT, CORRECT, WRONG, WRONG], [ERROR] * 4], seed=21)


@pytest.mark.slow
def test_a_rank_without_valid_samples_reduces_with_the_others(tmp_path):
    import json

    import torch.multiprocessing as mp

    from winnow.brokers import free_port
    from winnow.learner.tiny import build_tiny_model_and_tokenizer

    model, _ = build_tiny_model_and_tokenizer(seed=21)
    whole = _trainer(model, CONFIGS["raft_beta"]).train_step(_invalid_share_groups()).metrics
    out = tmp_path / "rank0.json"
    # raft_beta; rank 1's only group has no valid sample (every sample ERROR), so its step has no beta-sampler
    # diagnostics: the reduction must still match (it failed: the ranks' vectors differed in length)
    mp.start_processes(_rank_main, args=(free_port(), str(out), "raft_beta", "invalid_share"), nprocs=2,
                       start_method="spawn", join=True)
    two = json.loads(out.read_text())
    beta = [k for k in whole if k.startswith(("beta_", "snis_"))]
    assert len(beta) == 9
    for k in beta:  # only rank 0 has valid samples: its diagnostics are the whole batch's
        assert two[k] == pytest.approx(whole[k], rel=1e-9), k
    assert two["groups"] == 3.0 and two["invalid_samples"] == whole["invalid_samples"] == 4.0


def test_docs_are_generated_from_the_table():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "metrics_doc.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    text = (ROOT / "docs" / "metrics.md").read_text()
    for m in LEARNER:
        if m.source != "service":
            assert f"| `{m.key}` |" in text, m.key
        if m.prom:
            assert f"`{m.prom}`" in text, m.prom


def test_docs_check_fails_on_a_stale_doc(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import metrics_doc
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    stale = tmp_path / "metrics.md"
    stale.write_text((ROOT / "docs" / "metrics.md").read_text().replace("Clipped tokens / trained tokens", "Clipped"))
    monkeypatch.setattr(metrics_doc, "DOC", stale)
    monkeypatch.setattr(metrics_doc, "ROOT", tmp_path)
    assert metrics_doc.main(["--check"]) == 1
    assert metrics_doc.main([]) == 0 and metrics_doc.main(["--check"]) == 0  # regenerated


@pytest.mark.parametrize("module, table, block", [("winnow.generator.metrics", "GENERATOR", "generator"),
                                                  ("winnow.verifier.service_metrics", "VERIFIER", "verifier")])
def test_the_services_doc_sections_are_generated_from_their_tables(module, table, block, tmp_path, monkeypatch):
    """The generator's and the verifier's tables in docs/metrics.md are generated blocks: one line per row, in the
    table's order, with its type, labels and doc; an edited line is stale, and regenerating restores it."""
    import importlib

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import metrics_doc
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    rows = getattr(importlib.import_module(module), table)
    text = (ROOT / "docs" / "metrics.md").read_text()
    body = text[text.index(f"<!-- BEGIN generated {block}:"):text.index(f"<!-- END generated {block} -->")]
    assert re.findall(r"^\| `(winnow_\w+)` \| (\w+) \|", body, flags=re.M) == [(m.prom, m.kind) for m in rows]
    first = rows[0]
    line = next(x for x in body.splitlines() if x.startswith(f"| `{first.prom}` |"))
    assert " ".join((first.doc or first.help).split()) in line
    stale = tmp_path / "metrics.md"
    stale.write_text(text.replace(line, line.replace(first.kind, "summary", 1)))
    monkeypatch.setattr(metrics_doc, "DOC", stale)
    monkeypatch.setattr(metrics_doc, "ROOT", tmp_path)
    assert metrics_doc.main(["--check"]) == 1
    assert metrics_doc.main([]) == 0 and stale.read_text() == text


def test_the_service_uses_only_declared_collectors():
    """Every ``self.metrics.NAME`` of the learner service is a method of LearnerMetrics or a row of the table."""
    from prometheus_client import CollectorRegistry

    from winnow.learner.metrics import LearnerMetrics

    metrics = LearnerMetrics(CollectorRegistry())
    used = set(re.findall(r"self\.metrics\.(\w+)", (ROOT / "learner" / "service.py").read_text()))
    assert used
    for name in used:
        assert getattr(metrics, name) is not None, name
    with pytest.raises(AttributeError, match="no collector 'nonexistent'"):
        _ = metrics.nonexistent


def test_step_gauges_follow_the_table():
    """A step's metrics set their gauges; the mismatch gauges keep their value on a step without same-version
    tokens; a preset without the beta-sampler's keys leaves those unset."""
    from prometheus_client import CollectorRegistry

    from winnow.learner.metrics import LearnerMetrics

    reg = CollectorRegistry()
    lm = LearnerMetrics(reg)
    lm.observe_metrics({"loss": 0.5, "clip_frac": 0.25, "tokens": 7.0, "mismatch_kl": 0.01, "mismatch_tokens": 3.0})
    lm.observe_metrics({"loss": 0.25, "tokens": 3.0, "mismatch_kl": 0.0, "mismatch_tokens": 0.0})
    get = reg.get_sample_value
    assert get("winnow_learner_loss") == 0.25 and get("winnow_learner_clipped_token_ratio") == 0.25
    assert get("winnow_learner_tokens_total") == 10.0  # a counter: 7 + 3
    assert get("winnow_learner_mismatch_kl") == 0.01  # set_if mismatch_tokens > 0
    assert get("winnow_learner_beta_identity", {"side": "is_weight_var"}) is None


def test_the_service_row_fields_have_rows():
    """The fields the learner service adds to each ``metrics.jsonl`` row (read from its source) are rows of the
    table (``source="row"``), so the sinks and the docs know them."""
    text = (ROOT / "learner" / "service.py").read_text()
    block = text[text.index("append_jsonl(self._jsonl, {"):]
    block = block[: block.index("}))")]
    fields = set(re.findall(r'"(\w+)":', block)) - {"version", "time", "outcomes", "batch_outcomes"}
    assert fields, "no metrics.jsonl fields found in learner/service.py"
    rows = {m.key for m in LEARNER if m.source == "row"}
    assert fields <= rows, f"metrics.jsonl fields without a row: {sorted(fields - rows)}"
