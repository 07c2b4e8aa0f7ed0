"""The committed stubs in winnow/v1/ must match protos/ (regenerate: python scripts/gen_protos.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gen():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stubs_are_fresh(tmp_path):
    _gen().generate(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated, "protoc generated nothing"
    stale = [str(rel) for rel in generated if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, f"stale stubs (run python scripts/gen_protos.py): {stale}"


def test_status_enum_matches_python_mirror():
    from winnow.v1 import verifier_pb2
    from winnow.verdict import Status

    proto = {v.name.removeprefix("STATUS_"): v.number for v in verifier_pb2.Status.DESCRIPTOR.values}
    assert proto == {s.name: s.value for s in Status}
