"""The generator's decisions (:class:`winnow.generator.state.GeneratorState`) without Kafka, an engine or a clock:
which announcement to load, which to refuse or skip, when to poll and wait, which requests to quarantine, which
groups fit a Kafka message, how a batch is bucketed. Unit tier: CPU, milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from winnow.generator.config import GeneratorConfig
from winnow.generator.state import (
    MAX_SIDE_BYTES,
    MAX_VERIFIER_OPTIONS,
    RECORD_OVERHEAD_BYTES,
    GeneratorState,
    Refusal,
    buckets,
)
from winnow.sampling import SamplingConfig
from winnow.v1 import messages_pb2

MAX_BYTES = 1_000_000


def _state(root: Path | str = "", **kw) -> GeneratorState:
    args = dict(sampling=SamplingConfig(max_new_tokens=64), max_group_size=16, max_prompt_tokens=100,
                max_message_bytes=MAX_BYTES, poll_interval_s=5.0, max_version_jump=10, weights_root=str(root))
    return GeneratorState(**{**args, **kw})


def _ann(version: int, sha: str = "a", *, final: bool = False, uri: str = "v/model.safetensors"):
    return messages_pb2.WeightAnnouncement(version=version, uri=uri, sha256=sha * 64, format="safetensors",
                                           final=final)


def _req(**kw) -> messages_pb2.PromptRequest:
    return messages_pb2.PromptRequest(**{"request_id": "r", "prompt_id": "p", "problem": "1+1", "task": "math",
                                         "gold": "2", "n": 4, **kw})


def _never(_req) -> int:
    raise AssertionError("the tokenizer must not run for this request")


# -------------------------------------------------------------------------------------------- weights


def test_the_last_announcement_read_wins_and_the_loaded_version_is_not_loaded_again():
    s = _state()
    assert s.to_load(0) is None  # nothing announced yet
    s.announced(_ann(3))
    s.announced(_ann(2, "b"))  # read later: a learner resumed from an older checkpoint is followed
    assert s.to_load(0).version == 2
    assert s.to_load(2) is None  # already loaded


def test_the_same_version_of_another_lineage_is_loaded():
    """A generator holds a dead lineage's v3 (loaded from an announcement); the learner, restored from its v2
    checkpoint, announces v2 and then its own v3 (another file) in one poll: the new v3 is loaded, not taken for the
    one held. Weights the engine started with (no announcement) are known by version only."""
    s = _state()
    s.announced(_ann(3, "a"))
    s.loaded(_ann(3, "a"))
    assert s.to_load(3) is None
    s.announced(_ann(2, "b"))
    s.announced(_ann(3, "c"))
    assert s.to_load(3).sha256 == "c" * 64
    s.loaded(_ann(3, "c"))
    assert s.to_load(3) is None
    fresh = _state()
    fresh.announced(_ann(0, "d"))
    assert fresh.to_load(0) is None  # the initial weights, re-announced as v0


def test_a_rejected_announcement_is_skipped_but_the_same_version_with_another_file_is_not():
    s = _state()
    s.announced(_ann(3, "a"))
    s.reject(_ann(3, "a"))  # e.g. sha256 mismatch
    assert s.to_load(0) is None
    s.announced(_ann(3, "b"))  # re-announced with a new file
    assert s.to_load(0).sha256 == "b" * 64


def test_a_version_jump_is_refused_and_rejected_before_anything_is_opened(tmp_path):
    s = _state(tmp_path, max_version_jump=10)
    ok = s.locate(_ann(15), loaded=5)  # 15 - 5 = 10: at the bound, allowed
    assert ok == (tmp_path / "v/model.safetensors").resolve()
    far = _ann(16)  # 16 - 5 = 11 > 10
    got = s.locate(far, loaded=5)
    assert isinstance(got, Refusal) and got.reason == "version" and "max_version_jump=10" in got.detail
    assert (16, "a" * 64) in s.rejected
    s.announced(far)
    assert s.to_load(5) is None  # not retried at the next poll
    assert s.locate(_ann(1), loaded=5) == ok  # older versions are followed (a resumed learner)
    negative = s.locate(_ann(-1), loaded=5)  # int64 on the wire: negative would sort below every version
    assert negative == Refusal("version", "version -1 is outside [0, 2^63)")


def test_a_file_outside_the_weight_store_is_refused_by_location(tmp_path):
    s = _state(tmp_path / "store")
    for uri in ("/etc/passwd", "file:///etc/passwd", "../x/model.safetensors"):
        got = s.locate(_ann(1, uri=uri), loaded=0)
        assert isinstance(got, Refusal) and got.reason == "location", uri
    assert s.rejected == {(1, "a" * 64)}


def test_final_weights_finish_the_run_until_a_newer_non_final_announcement():
    s = _state()
    assert not s.finished
    s.announced(_ann(7, final=True))
    assert s.finished
    s.announced(_ann(8))  # the run was continued
    assert not s.finished


def test_polls_are_due_every_poll_interval():
    s = _state(poll_interval_s=5.0)
    s.polled(100.0)
    assert not s.poll_due(104.9)
    assert s.poll_due(105.0)  # 105 - 100 = 5 >= 5


def test_catch_up_waits_while_behind_and_before_the_deadline():
    assert GeneratorState.catching_up(loaded=2, wanted=3, now=9.0, deadline=10.0)
    assert not GeneratorState.catching_up(loaded=3, wanted=3, now=9.0, deadline=10.0)  # caught up
    assert not GeneratorState.catching_up(loaded=4, wanted=3, now=9.0, deadline=10.0)  # ahead
    assert not GeneratorState.catching_up(loaded=2, wanted=3, now=10.0, deadline=10.0)  # gave up


# -------------------------------------------------------------------------------------------- requests


def test_a_good_request_passes_and_is_tokenized_once():
    calls = []
    assert _state().poison(_req(), lambda r: calls.append(r) or 10) is None
    assert len(calls) == 1


@pytest.mark.parametrize(("request_fields", "reason", "detail"), [
    ({"n": 17}, "n", "n=17 > max_group_size 16"),
    ({"verifier_options": {str(i): "" for i in range(MAX_VERIFIER_OPTIONS + 1)}}, "size", "65 verifier options"),
    # request id + prompt id + task + gold: "r" + "p" + "math" + gold = 6 + len(gold) bytes
    ({"gold": "x" * (MAX_SIDE_BYTES - 5)}, "size", f"{MAX_SIDE_BYTES + 1} bytes of ids"),
    ({"sampling": messages_pb2.SamplingParams(max_new_tokens=70_000)}, "sampling", "max_new_tokens"),
    # 16 samples x 10417 tokens x 6 bytes = 1_000_032 > 1_000_000
    ({"n": 16, "sampling": messages_pb2.SamplingParams(max_new_tokens=10_417)}, "size", "1000032 bytes"),
    # 100 tokens x 64 characters = 6400 characters at most
    ({"problem": "x" * 6401}, "prompt", "6401 characters"),
    ({"messages": [messages_pb2.ChatMessage(role="u", content="")] * 101}, "prompt", "in 101 messages"),
])
def test_poison_requests_are_refused_by_the_cheap_bounds_without_tokenizing(request_fields, reason, detail):
    got = _state().poison(_req(**request_fields), _never)
    assert got is not None and got.reason == reason and detail in got.detail, got


def test_the_side_bytes_bound_is_exact():
    # "r" + "p" + "math" + gold: 6 + len(gold) bytes; at MAX_SIDE_BYTES it passes
    assert _state().poison(_req(gold="x" * (MAX_SIDE_BYTES - 6)), lambda r: 1) is None


def test_the_message_size_bound_is_exact():
    # 16 x 10416 x 6 = 999_936 <= 1_000_000: passes
    req = _req(n=16, sampling=messages_pb2.SamplingParams(max_new_tokens=10_416))
    assert _state().poison(req, lambda r: 1) is None


def test_the_tokenizer_decides_last():
    s = _state(max_prompt_tokens=100)
    assert s.poison(_req(), lambda r: 100) is None
    assert s.poison(_req(), lambda r: 101) == Refusal("prompt", "101 prompt tokens > max_prompt_tokens 100")

    def broken(_r):
        raise UnicodeError("surrogates not allowed")

    assert s.poison(_req(), broken) == Refusal("prompt", "surrogates not allowed")


def test_request_sampling_merges_over_the_defaults():
    s = _state(sampling=SamplingConfig(temperature=1.0, max_new_tokens=64))
    assert s.request_sampling(_req()) == SamplingConfig(temperature=1.0, max_new_tokens=64)
    got = s.request_sampling(_req(sampling=messages_pb2.SamplingParams(temperature=0.5, seed=3)))
    assert got == SamplingConfig(temperature=0.5, max_new_tokens=64, seed=3)


# -------------------------------------------------------------------------------------------- batches


def test_groups_larger_than_a_message_are_split_off():
    s = _state(max_message_bytes=10_000)
    limit = 10_000 - RECORD_OVERHEAD_BYTES  # 5904 bytes for the group itself
    fits = messages_pb2.ScoredGroup(request_id="a", problem="x" * (limit - 100))
    too_big = messages_pb2.ScoredGroup(request_id="b", problem="x" * limit)
    assert fits.ByteSize() <= limit < too_big.ByteSize()
    fit, dropped = s.split_publishable([fits, too_big])
    assert fit == [fits] and dropped == [(too_big, too_big.ByteSize())]


def test_requests_share_an_engine_call_by_n_and_sampling():
    a, b = SamplingConfig(temperature=1.0), SamplingConfig(temperature=0.5)
    reqs = [_req(n=4), _req(n=2), _req(n=4), _req(n=4), _req(n=0)]
    got = buckets(reqs, [a, a, a, b, a])
    assert list(got.values()) == [[0, 2], [1], [3], [4]]
    assert [n for n, _ in got] == [4, 2, 4, 1]  # n=0 on the wire means 1


def test_from_config_reads_every_limit():
    cfg = GeneratorConfig(max_group_size=3, max_prompt_tokens=7, weights={"root": "/w", "max_version_jump": 2,
                                                                          "poll_interval_s": 1.5})
    s = GeneratorState.from_config(cfg)
    assert (s.max_group_size, s.max_prompt_tokens, s.max_version_jump, s.poll_interval_s, s.weights_root) == (
        3, 7, 2, 1.5, "/w")
    assert s.max_message_bytes == cfg.kafka.max_message_bytes and s.sampling == cfg.sampling
