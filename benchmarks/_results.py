"""Where every benchmark writes what it measured: benchmarks/results/<name>.md (the table a person
reads) and <name>.json (the figures and settings, for tools). Imported by the scripts beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# CNNLAB_BENCH_RESULTS: another folder (the test suite's smoke runs write to a temporary one)
RESULTS = Path(os.environ.get("CNNLAB_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def save_results(
    name: str, table: str, payload: dict[str, Any], folder: Path | None = None
) -> Path:
    """Print ``table`` and write it and ``payload`` (JSON; sets and paths as lists / strings) to
    ``folder`` (default RESULTS), both with the machine they were measured on: its CPU, the
    capability torch's kernels use, native bf16 and the thread count (cnnlab.engine.devices.
    machine_info), so that figures from different machines are never compared as one. A payload
    read back from an earlier results file keeps its own "machine"."""
    from cnnlab.engine.devices import describe_machine, machine_info

    machine = payload.get("machine") or machine_info()
    table = table.rstrip("\n") + f"\n\nMachine: {describe_machine(machine)}\n"
    payload = {**payload, "machine": machine}
    print(table)
    folder = Path(folder or RESULTS)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.md").write_text(table.rstrip("\n") + "\n")
    (folder / f"{name}.json").write_text(
        json.dumps(payload, indent=2, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
        + "\n"
    )
    return folder / f"{name}.md"
