"""Issue 22: the attacks replayed against real components (scripts/attack.py), every one must hold.

The script starts its own brokers (noida, tansu), verifier, learners, generator and ``winnow up`` on 127.0.0.1,
attacks them as a foreign Kafka client, a gRPC client and a CLI user would, and writes one JSON line per attack
(``attacks.jsonl``: what was done, the expected safe outcome, what was observed, held, seconds, peak RSS). Each
attack is bounded (timeouts, RLIMIT_AS) and every process is stopped by PID. About five minutes on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.timeout(1500)]


def test_every_attack_of_issue_22_holds(tmp_path):
    out = tmp_path / "attacks"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "attack.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=1400, cwd=ROOT)
    records = [json.loads(line) for line in (out / "attacks.jsonl").read_text().splitlines()]
    listed = subprocess.run([sys.executable, str(ROOT / "scripts" / "attack.py"), "--out", str(out), "--list"],
                            capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert [r["name"] for r in records] == [line.split()[0] for line in listed]  # every attack ran, in order
    for r in records:
        assert {"name", "item", "did", "expected", "observed", "held", "seconds", "peak_rss_mb"} <= set(r)
    defects = [f"{r['name']} (item {r['item']}): expected {r['expected']}; observed {r['observed']}"
               for r in records if not r["held"]]
    assert not defects, "attacks that did not hold:\n" + "\n".join(defects) + "\n" + proc.stdout[-3000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"attacks {len(records)}, held {len(records)}, defects 0" in proc.stdout
