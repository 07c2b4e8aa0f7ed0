"""A code reward: run the answer's Python against the task's tests and return the fraction that pass.

``gold`` holds the tests: a JSON list of assert statements (``["assert add(1, 2) == 3", ...]``), a JSON object
``{"tests": [...]}``, or plain text with one assert per line. The answer is the last fenced block
(```` ```python ... ``` ````) of the response, else the whole response.

The answer runs in a child process of the verifier's worker (which already has the pool's memory limit and
wall-clock budget): ``python -I`` in an empty temporary directory, a minimal environment, its own limits
(``RLIMIT_AS`` 512 MiB, ``RLIMIT_CPU`` 5 s, ``RLIMIT_FSIZE`` 1 MiB, ``RLIMIT_NOFILE`` 64) and a wall-clock
timeout (5 s; the request option ``timeout_s`` sets another). That is process isolation, not a security boundary: run this verifier in a container with no secrets
and no network. The harness shares the answer's process, so an answer that exits early or prints the result line
itself can fool it; a production checker runs each test in its own process and compares outputs.

Statuses: no code -> NO_ANSWER, a syntax error -> UNPARSABLE (score 0), all tests pass -> CORRECT (1.0), else
WRONG with the fraction passed as partial credit (an answer that runs past the timeout passes none).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile

_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.S)
TIMEOUT_S = 5.0
_HARNESS = r"""
import json, sys
data = json.loads(sys.stdin.read())
ns = {"__name__": "__answer__"}
try:
    exec(compile(data["code"], "<answer>", "exec"), ns)
except SyntaxError as e:
    print(json.dumps({"syntax_error": str(e)})); sys.exit(0)
except BaseException as e:
    print(json.dumps({"passed": 0, "error": type(e).__name__})); sys.exit(0)
passed = 0
for test in data["tests"]:
    try:
        exec(test, ns)
        passed += 1
    except BaseException:
        pass
print(json.dumps({"passed": passed}))
"""


def _limits() -> None:
    import resource

    for limit, value in ((resource.RLIMIT_AS, 512 << 20), (resource.RLIMIT_CPU, 5), (resource.RLIMIT_FSIZE, 1 << 20),
                         (resource.RLIMIT_NOFILE, 64)):
        resource.setrlimit(limit, (value, value))


def parse_tests(gold: str) -> list[str]:
    text = gold.strip()
    if text.startswith(("[", "{")):
        data = json.loads(text)
        tests = data["tests"] if isinstance(data, dict) else data
    else:
        tests = [ln for ln in text.splitlines() if ln.strip()]
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("gold holds no tests")  # a bad gold: an ERROR verdict, never a zero
    return tests


def extract_code(completion: str) -> str:
    blocks = _FENCE.findall(completion)
    return (blocks[-1] if blocks else completion).strip()


def pass_fraction(completion: str, gold: str, timeout_s: str | float = TIMEOUT_S, **kwargs) -> dict:
    """{"status", "score": the fraction of tests passed, "extracted", "detail"}; ``timeout_s`` (a request option)
    bounds the answer's run (at most 30 s)."""
    timeout = min(float(timeout_s), 30.0)
    tests = parse_tests(gold)
    code = extract_code(completion)
    if not code:
        return {"status": "no_answer", "score": 0.0}
    with tempfile.TemporaryDirectory(prefix="winnow-code-") as tmp:
        try:
            proc = subprocess.run([sys.executable, "-I", "-c", _HARNESS], input=json.dumps({"code": code, "tests": tests}),
                                  capture_output=True, text=True, timeout=timeout, cwd=tmp, preexec_fn=_limits,
                                  env={"PATH": os.defpath, "PYTHONHASHSEED": "0"})
        except subprocess.TimeoutExpired:
            return {"status": "wrong", "score": 0.0, "extracted": code[:200], "detail": f"ran past {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    if "syntax_error" in result:
        return {"status": "unparsable", "score": 0.0, "extracted": code[:200], "detail": result["syntax_error"][:200]}
    passed = int(result.get("passed", 0)) if isinstance(result.get("passed", 0), int) else 0
    passed = max(0, min(passed, len(tests)))
    fraction = passed / len(tests)
    status = "correct" if passed == len(tests) else "wrong"
    return {"status": status, "score": fraction, "extracted": code[:200], "detail": f"{passed}/{len(tests)} tests passed"}
