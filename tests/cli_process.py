"""`cnnlab` as a user runs it, in a subprocess: `python -m cnnlab ...` with this checkout's sources.

Used by the CLI tests and by conftest.py's trained-run fixture. :func:`in_process` runs the same
entry point in the test process, for tests whose subject is what a command computes rather than
how a process starts or ends (start-up, signals, exit codes of a real process).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
TIMEOUT = 300  # seconds: a generous bound for a loaded 2-core machine


def cnnlab(*args: str, cwd: Path | None = None, timeout: float = TIMEOUT):
    """Run `python -m cnnlab ARGS` with this checkout's sources; returns the CompletedProcess."""
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("CI", None)  # a CI value changes nothing in cnnlab; keep the run like a user's
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def ok(*args: str, **kw) -> subprocess.CompletedProcess:
    proc = cnnlab(*args, **kw)
    assert proc.returncode == 0, f"cnnlab {' '.join(args)}: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    return proc


def assert_user_error(*args: str, names: str | list[str], **kw) -> str:
    """The command fails as a user error: exit 2, one stderr line naming `names`, no traceback."""
    proc = cnnlab(*args, **kw)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"cnnlab {' '.join(args)} -> {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for name in [names] if isinstance(names, str) else names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def in_process(*args: str) -> subprocess.CompletedProcess:
    """``cnnlab ARGS`` through :func:`cnnlab.cli.main` in this process, stdout and stderr captured:
    the same parser, handlers and exit code as the script, without a fresh process importing
    torch again (3-5 s a call on a 2-core machine; the script itself is tested by test_cli.py)."""
    from cnnlab import cli

    out, err = io.StringIO(), io.StringIO()
    widths = [(console, console._width) for console in (cli.out, cli.err)]
    try:  # as the subprocesses' COLUMNS=200: a captured console is 80 wide and folds long paths
        for console, _ in widths:
            console.width = 200
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(args))
    finally:
        for console, width in widths:
            console._width = width
    return subprocess.CompletedProcess(["cnnlab", *args], code, out.getvalue(), err.getvalue())
