"""Scan, split and decode a dataset in a forked process while the command imports torch (issue 25).

`cnnlab train --data FOLDER` spends its first ~2.5 s importing torch and what the optimizer pulls in
(torch._dynamo); a first run on a folder then spends as long again scanning, splitting and decoding
its files (5,000 MNIST PNGs: about 3 s on 2 cores). Those steps need neither torch nor the model, so
:func:`start` forks a child before torch is imported that runs them
(:func:`cnnlab.data.sources.warm_caches`: the same functions training runs, writing the same
on-disk caches -- the scan cache, the split cache, the decoded-image cache) on the second core, and
the training process finds them warm.

The child is only a cache warmer: the parent computes every key itself and reads a cache only where
its own key matches, so a child that differs from the parent (an option it cannot see, a file
changed meanwhile) wastes its work, never changes a result. :func:`wait` (called by
:func:`cnnlab.data.sources.load_source` in the parent) joins the child first, so the two never
write a cache at the same time. The child is silent (its output goes to /dev/null; the parent prints
every warning and error when it reads the caches), ends with its parent (``PR_SET_PDEATHSIG``), and
is never started where it cannot help or could harm: outside Linux (fork), for packaged datasets
(arrays, nothing cached), for streamed or resumed runs, and under torchrun (rank 0 decodes first by
design). Writing by hand: no library overlaps an import with file work.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

#: the child in flight in this process (None: none, or already joined)
_CHILD: int | None = None


def wanted(cfg: Any) -> bool:
    """Whether a warm-up child can help ``cfg`` (a TrainConfig): see the module docstring."""
    data = str(getattr(cfg, "data", "") or "")
    return (
        sys.platform == "linux"
        and "torch" not in sys.modules  # after the import there is nothing left to overlap
        and bool(data)
        and not data.startswith(("builtin:", "torchvision:"))
        and not getattr(cfg, "resume", None)
        and getattr(cfg, "loader", "auto") != "stream"
        and "LOCAL_RANK" not in os.environ  # torchrun: the ranks share the caches their own way
        and os.environ.get("CNNLAB_PREFETCH", "1") != "0"  # off: for a side-by-side measurement
    )


def start(cfg: Any, warm: Callable[[Any], None]) -> bool:
    """Fork a child that runs ``warm(cfg)`` (:func:`cnnlab.data.sources.warm_caches`) where
    :func:`wanted`; True when one was started."""
    global _CHILD
    if _CHILD is not None or not wanted(cfg):
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:  # no process to spare: the parent does the work itself, as without this
        return False
    if pid:
        _CHILD = pid
        return True
    code = 0  # the child from here on: it never returns into the caller's code
    try:
        _quiet_child(parent)
        warm(cfg)
    except BaseException:  # noqa: BLE001 - any failure: the parent redoes the work and reports it
        code = 1
    os._exit(code)


def wait() -> None:
    """Join the warm-up child if one is in flight (it has then written whatever it could)."""
    global _CHILD
    pid, _CHILD = _CHILD, None
    if pid is None:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:  # already reaped (a signal handler's wait): nothing to join
        pass


def _quiet_child(parent: int) -> None:
    """The child writes nothing to the terminal, stops at the parent's Ctrl-C, and ends when the
    parent does (an interrupted or failed command leaves no process and no half-written file)."""
    global _CHILD
    _CHILD = None
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    logging.disable(logging.CRITICAL)
    # Ctrl-C and its parent's end (SIGTERM, below) raise in the child, so the caches' own cleanup
    # runs (a half-written images-KEY.PID.tmp, as large as the decoded split, is removed)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:  # Linux prctl(PR_SET_PDEATHSIG, SIGTERM): the kernel ends the child with its parent
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent ended before the line above took effect
        os._exit(0)


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def config_for(config: Any, overrides: dict[str, Any]) -> Any:
    """The TrainConfig a `cnnlab train` command line will run (None where it is not valid yet:
    the parent then reports the problem as usual, without a child)."""
    from cnnlab.config import TrainConfig, make_config
    from cnnlab.errors import CnnlabError

    try:
        return make_config(TrainConfig, config, **overrides)
    except (CnnlabError, OSError, ValueError, TypeError):
        return None
