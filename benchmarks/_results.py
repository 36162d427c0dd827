"""Where every benchmark writes what it measured: benchmarks/results/<name>.md (the table a person
reads) and <name>.json (the figures and settings, for tools). Imported by the scripts beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# CNNLAB_BENCH_RESULTS: another folder (the test suite's smoke runs write to a temporary one)
RESULTS = Path(os.environ.get("CNNLAB_BENCH_RESULTS", Path(__file__).resolve().parent / "results"))


def save_results(name: str, table: str, payload: dict[str, Any]) -> Path:
    """Print ``table`` and write it and ``payload`` (JSON; sets and paths as lists / strings), both
    with the machine they were measured on (cnnlab.engine.devices.machine_info)."""
    from cnnlab.engine.devices import describe_machine, machine_info

    machine = machine_info()
    table = table.rstrip("\n") + f"\n\nMachine: {describe_machine(machine)}\n"
    payload = {**payload, "machine": machine}
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(table.rstrip("\n") + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps(payload, indent=2, default=lambda v: sorted(v) if isinstance(v, set) else str(v))
        + "\n"
    )
    return RESULTS / f"{name}.md"
