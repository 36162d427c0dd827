"""Wait for what a child process says, not for time to pass.

`OutputWatcher(proc)` reads the child's merged stdout/stderr in a thread, keeps every line, and
`wait_for(pattern)` blocks until a line matches (a threading.Event, no sleep polling), the child
exits, or the timeout passes.
"""

from __future__ import annotations

import re
import subprocess
import threading


class OutputWatcher:
    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None, "start the process with stdout=PIPE, text=True"
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> str:
        """The first line matching `pattern` (a regex); AssertionError on exit or timeout."""
        regex = re.compile(pattern)

        def found() -> str | None:
            return next((ln for ln in self.lines if regex.search(ln)), None)

        with self._changed:
            ok = self._changed.wait_for(lambda: found() is not None or self._done, timeout)
            line = found()
        assert line is not None, (
            f"no line matching {pattern!r} ({'exited' if ok else 'timed out'}); "
            f"last output: {''.join(self.lines[-40:])}"
        )
        return line

    def text(self, timeout: float = 60) -> str:
        """Everything the process said, once it has exited."""
        self._thread.join(timeout)
        return "".join(self.lines)
