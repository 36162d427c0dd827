"""Operating points of a classification run: "class C is positive when P(C) >= t", with t chosen on
the run's validation split for a target (`--target recall=0.95`, `precision=0.9`, `fpr=0.01`, or
`youden` / `f1`), measured on the test split with bootstrap intervals, stored in the run and
applied by `cnnlab predict RUN` (docs/imbalance.md).

Where it is stored. Evaluation never rewrites what training recorded, so the operating point is a
file training never writes:

* ``RUN/evaluations/<time>/operating_point.json`` (or ``--out``): the full record of this evaluation,
  kept for good, like every evaluation's other files;
* ``RUN/operating_point.json``: the run's *active* operating point, the one `cnnlab predict RUN`
  applies. A second one is refused unless ``--replace-operating-point`` is given; the replaced one
  is still in its own evaluation folder (its path is in the record), so nothing is lost.

The threshold belongs to the weights it was chosen for: the record holds their sha256, and predict
refuses to apply it to other weights (a resumed run's new best checkpoint) instead of guessing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab import __version__
from cnnlab.engine.checkpoint import sha256_file
from cnnlab.errors import ConfigError, DataError, close_matches
from cnnlab.metrics.scores import find_threshold
from cnnlab.metrics.stats import binary_intervals, binary_metrics
from cnnlab.run import read_json, write_json

FILE = "operating_point.json"
#: target kinds: a rate to reach (name=value) or a quantity to maximise (name alone)
WITH_VALUE = ("recall", "precision", "fpr")
MAXIMISED = ("youden", "f1")
KINDS = (*WITH_VALUE, *MAXIMISED)
CHOICES = "recall=R, precision=P, fpr=F (each in [0, 1]), youden or f1"
#: how to get past an operating point that does not fit the weights any more: choose it again,
#: or go on without it in the words of the command that applies it (predict, serve, export)
AGAIN = (
    "choose it again with `cnnlab evaluate {run} --positive {positive} --target {target} "
    "--replace-operating-point`, or {without}"
)
WITHOUT = {
    "predict": "predict without it: `cnnlab predict RUN IMAGES --ignore-operating-point`",
    "serve": "serve without it: `cnnlab serve RUN --ignore-operating-point`",
    "export": "export without it: `cnnlab export RUN --ignore-operating-point`",
}


@dataclass(frozen=True)
class Target:
    kind: str  # one of KINDS
    value: float | None = None  # for WITH_VALUE kinds

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}={self.value:g}"

    def rule(self) -> str:
        """What the threshold achieves on the validation split, in words."""
        if self.kind == "youden":
            return "the threshold maximising Youden's J = TPR - FPR"
        if self.kind == "f1":
            return "the threshold maximising F1"
        return {
            "recall": f"the highest threshold with recall >= {self.value:g}",
            "precision": f"the lowest threshold with precision >= {self.value:g}",
            "fpr": f"the lowest threshold with false-positive rate <= {self.value:g}",
        }[self.kind]


def parse_target(text: str) -> Target:
    """`recall=0.95` -> Target("recall", 0.95); a ConfigError naming what is allowed otherwise."""
    kind, eq, value = str(text).strip().partition("=")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(
            f"--target {text}: unknown kind {kind!r}{close_matches(kind, KINDS)}; choose {CHOICES}"
        )
    if kind in MAXIMISED:
        if eq:
            raise ConfigError(f"--target {text}: {kind} is maximised and takes no value")
        return Target(kind)
    if not eq or not value.strip():
        raise ConfigError(f"--target {text}: {kind} needs a value, e.g. --target {kind}=0.95")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"--target {text}: {value.strip()!r} is not a number") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ConfigError(
            f"--target {text}: {kind} is a share and must be in [0, 1], got {value.strip()}"
        )
    return Target(kind, number)


def positive_index(positive: str | None, class_names: list[str]) -> int:
    """The index of the positive class; a binary run defaults to its second class (index 1, as
    scikit-learn's pos_label=1)."""
    if positive is None:
        if len(class_names) == 2:
            return 1
        raise ConfigError(
            f"--target needs --positive CLASS for a run of {len(class_names)} classes "
            f"(one of {', '.join(class_names)})"
        )
    if positive in class_names:
        return class_names.index(positive)
    raise ConfigError(
        f"--positive {positive}: the run has no class {positive!r}"
        f"{close_matches(positive, class_names)}; its classes are {', '.join(class_names)}"
    )


def check_storable(run_dir: Path | None, replace: bool, weights: Path) -> None:
    """Refuse before any work when the operating point could not be chosen or stored: a
    checkpoint outside a run folder (no validation split to choose on), a run without a
    validation split, or an active operating point that --replace-operating-point does not
    replace."""
    if run_dir is None:
        raise ConfigError(
            f"{weights} is not inside a run folder: an operating point is chosen on the run's "
            "validation split; pass the run folder"
        )
    splits = read_json(run_dir / "splits.json").get("splits", {})
    if not splits.get("val"):
        raise ConfigError(
            f"the run {run_dir} has no validation split (trained with `cnnlab train "
            "--val-fraction 0`?): an operating point is chosen on validation images, never on the "
            "test images it is measured on; train with a validation split"
        )
    active = run_dir / FILE
    if active.is_file() and not replace:
        old = read_operating_point(run_dir) or {}
        kept = old.get("evaluation")
        kept = str(run_dir / kept) if kept and not Path(kept).is_absolute() else kept
        raise ConfigError(
            f"{active} exists (positive {old.get('positive_class')!r} at threshold "
            f"{old.get('threshold')}, chosen for {old.get('target')}); pass "
            "--replace-operating-point to make the new one active (the old record stays in "
            f"{kept or 'its evaluation folder'})"
        )


def choose(
    val_targets: np.ndarray, val_probs: np.ndarray, pos: int, target: Target, class_name: str
) -> dict[str, Any]:
    """Threshold on P(class pos) chosen on the validation split, and what it achieves there."""
    y = np.asarray(val_targets) == pos
    scores = np.asarray(val_probs)[:, pos]
    if y.all() or not y.any():
        what = "every" if y.all() else "no"
        raise DataError(
            "validation split",
            f"{what} image is of class {class_name!r}: a threshold needs positives and negatives",
        )
    try:
        threshold, _ = find_threshold(y, scores, target.kind, target=target.value)
    except ValueError as err:
        raise ConfigError(f"--target {target} on the validation split: {err}") from None
    achieved = binary_metrics(y, scores >= threshold)
    return {
        "threshold": threshold,
        "validation": {
            "num_samples": int(len(y)),
            "positives": int(y.sum()),
            **{k: achieved[k] for k in ("tp", "fp", "tn", "fn", "recall", "precision", "fpr")},
        },
    }


def measure(
    targets: np.ndarray, probs: np.ndarray, pos: int, threshold: float, *, seed: int = 0
) -> dict[str, Any]:
    """Binary metrics of "positive when P(pos) >= threshold" on an evaluation split, with 95 %
    percentile-bootstrap intervals (cnnlab.metrics.stats.binary_intervals)."""
    y = np.asarray(targets) == pos
    decided = np.asarray(probs)[:, pos] >= threshold
    counts = binary_metrics(y, decided)
    return {
        "num_samples": int(len(y)),
        "positives": int(y.sum()),
        **{k: counts[k] for k in ("tp", "fp", "tn", "fn")},
        "metrics": binary_intervals(y, decided, seed=seed),
    }


def record(
    *,
    class_names: list[str],
    pos: int,
    target: Target,
    chosen: dict[str, Any],
    measured: dict[str, Any],
    weights: Path,
    evaluated_on: dict[str, Any],
    evaluation: Path | None,
    run_dir: Path,
) -> dict[str, Any]:
    """The JSON record of one operating point (what predict reads back)."""
    name = class_names[pos]
    return {
        "positive_class": name,
        "positive_index": pos,
        "threshold": chosen["threshold"],
        "decision": f"positive when P({name}) >= threshold, else negative",
        "target": str(target),
        "rule": target.rule(),
        "chosen_on": {"split": "val", **chosen["validation"]},
        "evaluated_on": {**evaluated_on, **measured},
        "weights": {"file": weights.name, "sha256": sha256_file(weights)},
        "evaluation": _where(evaluation, run_dir),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cnnlab_version": __version__,
    }


def _where(evaluation: Path | None, run_dir: Path) -> str | None:
    """The evaluation folder relative to the run folder when inside it, else absolute."""
    if evaluation is None:
        return None
    try:
        return Path(evaluation).resolve().relative_to(Path(run_dir).resolve()).as_posix()
    except ValueError:
        return str(Path(evaluation).resolve())


def store(run_dir: Path, out_dir: Path | None, op: dict[str, Any]) -> Path:
    """Write the record into the evaluation folder (kept) and as the run's active operating point."""
    if out_dir is not None:
        write_json(out_dir / FILE, op)
    write_json(run_dir / FILE, op)
    return run_dir / FILE


def read_operating_point(run_dir: Path | None) -> dict[str, Any] | None:
    """The run's active operating point, or None when it has none."""
    if run_dir is None or not (Path(run_dir) / FILE).is_file():
        return None
    return read_json(Path(run_dir) / FILE)


def for_weights(
    run_dir: Path | None, weights: Path, class_names: list[str], *, command: str = "predict"
) -> dict | None:
    """The active operating point of the run `weights` belong to, checked against them; None when
    the run has none. A record chosen for other weights (the run was resumed and its best
    checkpoint changed) or other classes is refused, not applied; the refusal names the flag of
    ``command`` (predict, serve or export: the one applying it) that goes on without it."""
    op = read_operating_point(run_dir)
    if op is None:
        return None
    where = Path(run_dir) / FILE  # type: ignore[arg-type]
    again = AGAIN.format(
        run=run_dir, positive=op.get("positive_class"), target=op.get("target"),
        without=WITHOUT[command],
    )  # fmt: skip
    pos = op.get("positive_index")
    if not isinstance(pos, int) or not 0 <= pos < len(class_names):
        raise ConfigError(
            f"{where} names class index {pos!r}, which the run does not have; {again}"
        )
    if class_names[pos] != op.get("positive_class"):
        raise ConfigError(
            f"{where} names class {op.get('positive_class')!r} but the run's class {pos} is "
            f"{class_names[pos]!r}; {again}"
        )
    recorded = (op.get("weights") or {}).get("sha256")
    if recorded != sha256_file(weights):
        raise ConfigError(
            f"{where} was chosen for other weights ({(op.get('weights') or {}).get('file')}) than "
            f"{weights.name}, which {command} would use; {again}"
        )
    return op
