"""Port claims (winnow/ports.py): two `winnow up` runs started at once never choose one port."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from winnow.ports import PortClaims
from winnow.up import PORTS, assign_ports

ALWAYS_FREE = {"is_free": lambda h, p: True}  # the race: every port still bindable when both runs look


def _pick_from(start: int):
    it = iter(range(start, start + 1000, 7))
    return lambda h: next(it)


def test_a_claimed_default_port_goes_to_the_next_run_only_after_its_owner_dies(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        first = PortClaims(tmp_path, pid=sleeper.pid)  # another live `winnow up`
        ports_1 = assign_ports({}, "127.0.0.1", 2, claims=first, pick=_pick_from(41000), **ALWAYS_FREE)
        assert ports_1 == {name: default for name, (_, _, default) in PORTS.items()} | {"generator_metrics": 41000}
        second = PortClaims(tmp_path)
        ports_2 = assign_ports({}, "127.0.0.1", 2, claims=second, pick=_pick_from(42000), **ALWAYS_FREE)
        taken_1 = set(ports_1.values()) | {ports_1["generator_metrics"] + 1}
        taken_2 = set(ports_2.values()) | {ports_2["generator_metrics"] + 1}
        assert not taken_1 & taken_2, (ports_1, ports_2)
        # a port set in the config that another run holds: refused, naming that run
        from winnow.config import ConfigError

        with pytest.raises(ConfigError, match=f"verifier.port: port 50051 on 127.0.0.1 is in use by another winnow up "
                                              f"\\(pid {sleeper.pid}\\)"):
            assign_ports({"verifier": {"port": 50051}}, "127.0.0.1", claims=PortClaims(tmp_path), **ALWAYS_FREE)
        second.release()
    finally:
        sleeper.kill()
        sleeper.wait()
    # its owner is gone (killed -9, no release): the claims are stale and the defaults are free again
    third = PortClaims(tmp_path)
    ports_3 = assign_ports({}, "127.0.0.1", 1, claims=third, **ALWAYS_FREE)
    assert ports_3 == {name: default for name, (_, _, default) in PORTS.items()}
    third.release()
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]  # released: no claim files left


def test_a_reused_pid_does_not_keep_a_dead_runs_claim(tmp_path: Path) -> None:
    claims = PortClaims(tmp_path)
    with claims.locked():
        claims.claim("127.0.0.1", 50051)
    path = tmp_path / "127.0.0.1_50051"
    assert claims.holder("127.0.0.1", 50051) is not None
    other = PortClaims(tmp_path, pid=1)  # pid 1 is alive, but it did not write this claim
    path.write_text("1 99999999999\n")  # written by a pid 1 that started at another tick: not the live pid 1
    assert other.holder("127.0.0.1", 50051) is None and claims.free("127.0.0.1", 50051)


@pytest.mark.parametrize("runs", [4])
def test_runs_started_at_once_in_separate_processes_get_disjoint_ports(tmp_path: Path, runs: int) -> None:
    script = textwrap.dedent(f"""
        import json, sys, time
        from pathlib import Path
        from winnow.ports import PortClaims
        from winnow.up import assign_ports
        time.sleep(max(0.0, float(sys.argv[1]) - time.time()))  # start together
        claims = PortClaims(Path({str(tmp_path)!r}))
        ports = assign_ports({{}}, "127.0.0.1", 2, claims=claims, is_free=lambda h, p: True)
        print(json.dumps(ports), flush=True)
        sys.stdin.read()  # hold the claims (a live run) until the test has read every run's ports
    """)
    import time

    at = str(time.time() + 2.0)
    procs = [subprocess.Popen([sys.executable, "-c", script, at], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True) for _ in range(runs)]
    try:
        chosen = [json.loads(p.stdout.readline()) for p in procs]
    finally:
        for p in procs:
            p.communicate(timeout=30)
    every = [port for ports in chosen for name, port in ports.items()
             for port in ([port, port + 1] if name == "generator_metrics" else [port])]
    assert len(every) == len(set(every)) == runs * 5, chosen
