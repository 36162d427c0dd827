"""The suite gives the same verdict twice: its own set-up (tests/conftest.py) checked in a fresh
interpreter, as pytest would import it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PROBE = (
    "import json, os, sys; sys.path.insert(0, sys.argv[1]); import conftest; "
    "from hypothesis import settings; s = settings.default; "
    "print(json.dumps({'cache': os.environ['CNNLAB_CACHE'], "
    "'exists': os.path.isdir(os.environ['CNNLAB_CACHE']), 'derandomize': s.derandomize, "
    "'print_blob': s.print_blob, 'database': s.database is None}))"
)


def _probe(**env: str) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("CI", "HYPOTHESIS_PROFILE")}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(TESTS)],
        env=base | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_fresh_cache_per_session_and_hypothesis_derandomized_on_ci(tmp_path):
    """Two sessions, a user's CNNLAB_CACHE set in both: each gets its own new folder (never the
    user's), removed at exit. With CI set, hypothesis draws the same examples on every run; the
    blob that replays a failure is printed everywhere."""
    user_cache = tmp_path / "my-cache"
    ci = _probe(CNNLAB_CACHE=str(user_cache), CI="true")
    local = _probe(CNNLAB_CACHE=str(user_cache))
    assert ci["cache"] != str(user_cache) and not user_cache.exists()  # never the user's
    assert ci["cache"] != local["cache"]  # a new one per session
    assert ci["exists"] and Path(ci["cache"]).parent == Path(tempfile.gettempdir())
    assert not Path(ci["cache"]).exists() and not Path(local["cache"]).exists()  # removed
    assert ci["derandomize"] and ci["print_blob"] and ci["database"]
    assert not local["derandomize"] and local["print_blob"]
