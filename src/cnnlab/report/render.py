"""Where the report's figures are drawn: in this process, or in worker processes while the main
process scores the test split (issue 25: a short run's wait is mostly start-up and the report).

A :class:`Renderer` takes figure jobs -- ``submit(kind, *args)``, ``kind`` a name in
:data:`cnnlab.report.html.FIGURES` -- and returns futures of their PNG bytes. Both kinds draw with
the same function (:func:`cnnlab.report.html.render_png`, Agg, the report's style), so a figure
drawn by a worker is byte for byte the one drawn in place (tests/test_report_render.py).

:func:`start_renderer` chooses: worker processes when this process has not imported matplotlib
(a command: the workers import it, about 0.6 s, while the main process decodes, sets up and
trains, and draw while it scores the test split), else in place (a notebook kernel, or a test
session where matplotlib is already loaded and may carry the user's backend). The workers run at
a low priority, so they never slow training down; on a machine shared with other busy processes
the report then waits longer. Workers are forked (Linux only): a fork does not run the user's
``__main__`` again as spawn would (a script without an ``if __name__`` guard would train twice),
and the children use neither torch nor OpenMP. They ignore Ctrl-C (the main process stops them)
and are shut down by :meth:`Renderer.close`, or when the renderer is collected.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import weakref
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

WORKERS = (
    2  # processes: the five figures drawn once the test split is scored take about 1 s on one core
)


class Renderer:
    """Draws figure jobs in this process, each when it is submitted."""

    workers = 0

    def __init__(self) -> None:
        self._jobs: dict[Any, Future] = {}

    def submit(self, kind: str, *args: Any) -> Future:
        """A future of ``render_png(kind, *args)``; a job with the same hashable arguments as an
        earlier one (training curves submitted as soon as training ends) shares its future."""
        try:
            key = (kind, args)
            hash(key)
        except TypeError:  # arrays, dicts: never the same job twice
            key = None
        if key is not None and key in self._jobs:
            return self._jobs[key]
        future = self._start(kind, args)
        if key is not None:
            self._jobs[key] = future
        return future

    def _start(self, kind: str, args: tuple[Any, ...]) -> Future:
        from cnnlab.report.html import drawn_now

        return drawn_now(kind, *args)

    def close(self) -> None:
        """Nothing to release in place."""


class WorkerRenderer(Renderer):
    """Draws figure jobs in ``workers`` forked processes that import pyplot when they start."""

    def __init__(self, workers: int = WORKERS) -> None:
        import multiprocessing

        super().__init__()
        self.workers = workers
        self._pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_start
        )
        # a fork context starts every worker at the first job: now, before the scan starts
        # threads, so the imports overlap the main process's work
        self._pool.submit(os.getpid)
        self._drawn = [0]  # figure jobs submitted: the finalizer reads it, so not on self
        self._finalizer = weakref.finalize(self, _shutdown, self._pool, self._drawn)

    def _start(self, kind: str, args: tuple[Any, ...]) -> Future:
        from cnnlab.report.html import render_png

        self._drawn[0] += 1
        return self._pool.submit(render_png, kind, *args)

    def close(self) -> None:
        """Stop the workers (jobs not started are dropped; call after the results are read)."""
        self._finalizer()


def _shutdown(pool: ProcessPoolExecutor, drawn: list[int]) -> None:
    # waits for the workers to exit (idle ones do at once; a figure being drawn is finished):
    # shutdown(wait=False) left the pool's wake-up pipe to fail at interpreter exit. Workers never
    # given a figure (a run stopped by an error, or without a report) may still be importing
    # pyplot, which waiting would add to the command's time (0.8 s): they are killed instead
    # (SIGKILL: a worker forked before its initializer ran still has the parent's SIGTERM handler;
    # it holds nothing to clean up, its figures are bytes in memory).
    if not drawn[0]:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(OSError):
                process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def _worker_start() -> None:
    """A worker ignores Ctrl-C (the main process owns the run and stops it), ends on SIGTERM, yields the CPU to
    the main process (it imports pyplot and draws a first figure beside the decoding, set-up and
    training: those keep their cores) and gets matplotlib ready."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a training process's SIGTERM handler (checkpoint, then stop) is inherited by the fork and
    # means nothing here: a worker stopped by its renderer ends at once
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        os.nice(10)  # a lower priority; the report's figures are drawn while the main waits
    except OSError:  # not permitted: the default priority
        pass
    import numpy as np

    from cnnlab.report.html import render_png

    # a first figure loads the fonts and fills matplotlib's text caches (about 0.2 s a process):
    # drawn now, while the main process trains, not while it waits for the report
    render_png("confusion", np.array([[3, 1], [0, 2]]), ["a", "b"], True)


#: workers the command line forked before importing torch (:func:`start_early`), waiting for the
#: run's :func:`start_renderer`
_EARLY: WorkerRenderer | None = None


def start_early() -> None:
    """Fork the workers now, before this process imports torch: `cnnlab train` calls it first.

    Why: importing torch takes about 1.3 s on one core while the other is idle on a re-run (the
    caches are warm, so the scan and decode child has nothing to do); the workers' own start
    (pyplot and a first figure, about 0.7 s of CPU each) then runs there. Started later, at the
    scan, it took CPU from training's two threads instead. Not where :func:`start_renderer` would
    draw in place, under torchrun, or when torch is already loaded (nothing left to overlap)."""
    global _EARLY
    if (
        _EARLY is None
        and sys.platform == "linux"
        and not {"torch", "matplotlib", "ipykernel"} & sys.modules.keys()
        and "LOCAL_RANK" not in os.environ
    ):
        _EARLY = WorkerRenderer()


def drop_early() -> None:
    """Stop the workers :func:`start_early` forked, for a run that draws no report."""
    global _EARLY
    early, _EARLY = _EARLY, None
    if early is not None:
        early.close()


def renderer_for(report: bool) -> Renderer | None:
    """The run's renderer when it draws a report (:func:`start_renderer`), else None, with the
    workers the command line forked for it stopped: each task's set-up calls this once."""
    if report:
        return start_renderer()
    drop_early()
    return None


def start_renderer(workers: int | None = None) -> Renderer:
    """Worker processes where they pay (see the module docstring), else drawing in place.
    ``workers``: 0 draws in place; None decides as described (taking the workers
    :func:`start_early` forked, where it did)."""
    global _EARLY
    if workers is None and _EARLY is not None:
        early, _EARLY = _EARLY, None
        return early
    if workers is None:
        # a notebook kernel keeps its figures in place (its output streams talk to Jupyter)
        loaded = {"matplotlib", "ipykernel"} & sys.modules.keys()
        workers = WORKERS if sys.platform == "linux" and not loaded else 0
    return WorkerRenderer(workers) if workers > 0 else Renderer()
