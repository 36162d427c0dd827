"""Where a run's wall-clock time goes: start-up, scan, decode, training, test evaluation, report.

A :class:`Timings` starts its clock when it is made (the train call) and is told where each phase
ends with :meth:`Timings.lap`: the seconds since the previous lap go to the phase named, so every
second between the call and the last lap is counted once and the phases add up to the total.
A phase named twice adds up (``setup`` before the scan and again before training).

Start-up is the time before the train call -- the interpreter, importing cnnlab and torch, parsing
the command line -- and only a command knows it: the CLI passes :func:`process_age_s` in.

Torch-free (the CLI imports it); this module writes nothing itself but :meth:`Timings.record`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

#: phase names in the order a classification run goes through them (others print after these)
PHASES = ("startup", "setup", "scan", "decode", "train", "evaluate", "report")
#: what the time split calls each phase
LABELS = {
    "startup": "start-up",
    "setup": "set-up",
    "scan": "scan",
    "decode": "decode",
    "train": "training",
    "evaluate": "test evaluation",
    "report": "report",
}


def process_age_s() -> float | None:
    """Seconds since this process started, from the kernel's record of its start (Linux,
    /proc/self/stat, in clock ticks of 10 ms) against the same boot clock; None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text()
        # field 22 (starttime): the fields after the command name "(...)" start at field 3
        ticks = int(stat.rpartition(")")[2].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        return None
    return age if age >= 0 else None


class Timings:
    """Seconds per phase of one run; see the module docstring."""

    def __init__(self, startup_s: float | None = None) -> None:
        self.seconds: dict[str, float] = {}
        if startup_s is not None:
            self.seconds["startup"] = startup_s
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        """The seconds since the previous lap (or since this object was made) go to ``phase``."""
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + (now - self._last)
        self._last = now

    def split(self) -> dict[str, float]:
        """{phase: seconds} in the order of PHASES (others after), and "total": their sum."""
        order = [p for p in PHASES if p in self.seconds]
        order += [p for p in self.seconds if p not in PHASES]
        split = {p: round(self.seconds[p], 3) for p in order}
        return split | {"total": round(sum(self.seconds.values()), 3)}

    def summary(self) -> str:
        """One line: 'time split (s): start-up 2.41, scan 0.32, ..., total 9.02'."""
        split = self.split()
        parts = [f"{LABELS.get(p, p)} {s:.2f}" for p, s in split.items() if p != "total"]
        return f"time split (s): {', '.join(parts)}; total {split['total']:.2f}"

    def record(self, path: Path) -> None:
        """Add the split to the JSON object in ``path`` (run.json) as "time_split_s"."""
        from cnnlab.run import write_json  # torch comes with cnnlab.run; only a run needs it

        record = json.loads(Path(path).read_text())
        write_json(path, record | {"time_split_s": self.split()})
