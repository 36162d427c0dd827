"""Class imbalance in classification training: the class weights (`--class-weights none|auto|FILE`),
the warnings for extreme imbalance, and what the run records about it (`class_balance.json`).

* ``auto``: w_c = N / (K n_c) with N training images, K classes present in the training split and
  n_c images of class c (scikit-learn's ``compute_class_weight("balanced")``). The weights average
  1 over the training *samples* (sum_c n_c w_c / N = 1), so the weighted loss keeps the scale of the
  unweighted one and the learning rate needs no change (see cnnlab.tasks.classification).
* ``FILE``: a JSON object {class name: weight}, used as given; every class must have a finite
  weight >= 0 (not all 0), and no other name may appear.

Multi-label runs ((N, L) targets): the counts are each label's positives and the weights are
``BCEWithLogitsLoss``'s ``pos_weight``: ``auto`` gives pos_weight_l = (N - n_l) / n_l (negatives
over positives, PyTorch's documented choice; 1 for a label without positives), a FILE
{label: pos_weight} is used as given.

The sampler (`--sampler balanced`) lives in the loader (cnnlab.data.loader.balanced_indices), the
loss in the task (cnnlab.tasks.classification); this module only records them beside the weights.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.data.scan import IMBALANCE_HINT, IMBALANCE_WARN_RATIO
from cnnlab.errors import ConfigError, DataError, close_matches
from cnnlab.run import write_json

log = logging.getLogger(__name__)

#: the file a run records its training class counts, weights, sampler and loss in
RECORD = "class_balance.json"
#: what a multi-label run can do about rare labels (IMBALANCE_HINT's sampler / focal loss are
#: single-label)
MULTILABEL_HINT = "train with `cnnlab train --class-weights auto` (BCE pos_weight per label)"
#: a class with fewer training images than this is named in a warning (docs/bad-inputs.md #69)
FEW_IMAGES = 5


@dataclass(frozen=True)
class ClassBalance:
    """The training split's class counts and what the run does about their imbalance."""

    class_names: list[str]
    train_counts: list[int]
    mode: str  # "none" | "auto" | "file"
    weights: list[float] | None  # one per class, in class order; None: unweighted
    source: str | None = None  # the weights file (mode "file")
    sampler: str = "none"
    loss: str = "ce"
    focal_gamma: float = 2.0
    multilabel: bool = False  # counts are positives per label; weights are pos_weight

    @property
    def ratio(self) -> float:
        """Largest / smallest training class count (inf when a class has no training image)."""
        lo, hi = min(self.train_counts), max(self.train_counts)
        return math.inf if lo == 0 else hi / lo

    @property
    def imbalanced(self) -> bool:
        """The ratio is above 10 (the threshold of `cnnlab data check`'s imbalance warning)."""
        return self.ratio > IMBALANCE_WARN_RATIO

    def task_options(self) -> dict[str, Any]:
        """The keyword arguments of ClassificationTask (MultiLabelTask) that carry this balance."""
        if self.multilabel:
            return {"pos_weight": self.weights}
        return {
            "class_weights": self.weights,
            "criterion": self.loss,
            "focal_gamma": self.focal_gamma,
        }

    def to_dict(self) -> dict[str, Any]:
        counts = dict(zip(self.class_names, self.train_counts, strict=True))
        weights = None
        mean = None
        if self.weights is not None:
            weights = dict(zip(self.class_names, self.weights, strict=True))
        if self.weights is not None and not self.multilabel:  # pos_weight has no such mean
            total = sum(self.train_counts)
            mean = sum(n * w for n, w in zip(self.train_counts, self.weights, strict=True)) / total
        return {
            "train_class_counts": counts,
            "imbalance_ratio": None if math.isinf(self.ratio) else self.ratio,
            "imbalanced": self.imbalanced,
            "class_weights": {
                "mode": self.mode,
                "file": self.source,
                "weights": weights,
                "mean_weight_over_training_samples": mean,
            },
            "sampler": self.sampler,
            "loss": self.loss,
            "focal_gamma": self.focal_gamma if self.loss == "focal" else None,
            **({"multilabel": True, "weights_are": "pos_weight"} if self.multilabel else {}),
        }

    def record(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / RECORD, self.to_dict())


def auto_class_weights(counts: Sequence[int]) -> list[float]:
    """w_c = N / (K n_c) over the classes present (n_c > 0); an absent class (never a target in
    training, so its weight is never used) gets 1."""
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    k = int(present.sum())
    total = float(n.sum())
    return [float(total / (k * c)) if c > 0 else 1.0 for c in n]


def read_class_weights(path: str | Path, class_names: Sequence[str]) -> list[float]:
    """The weights of a JSON file {class name: weight}, in class order; a DataError naming the
    file and the class for a missing or unknown class, a weight that is not a finite number >= 0,
    or weights that are all 0."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"class-weights file not found: {path}; give none, auto or a JSON file "
            '{"class name": weight, ...}'
        )
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(p, f"is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise DataError(
            p, f'must be a JSON object {{"class name": weight, ...}}, got a {type(raw).__name__}'
        )
    names = list(class_names)
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise DataError(
            p,
            f"names class {unknown[0]!r}, which the training data does not have"
            f"{close_matches(unknown[0], names)}; its classes are {', '.join(names)}",
        )
    missing = [c for c in names if c not in raw]
    if missing:
        raise DataError(
            p,
            f"has no weight for class(es) {', '.join(repr(c) for c in missing)}; give every class a "
            f"weight ({', '.join(names)})",
        )
    weights = []
    for c in names:
        w = raw[c]
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise DataError(p, f"the weight of class {c!r} must be a number, got {w!r}")
        if not math.isfinite(w) or w < 0:
            raise DataError(p, f"the weight of class {c!r} must be finite and >= 0, got {w!r}")
        weights.append(float(w))
    if not any(weights):
        raise DataError(p, "every class weight is 0: nothing would be learned")
    return weights


def class_balance(
    cfg: Any,
    targets: np.ndarray,
    class_names: Sequence[str],
    *,
    recorded: Path | None = None,
) -> ClassBalance:
    """Resolve `cfg.class_weights` on the training split's `targets` and say what was chosen.

    `recorded`: the run folder of a resumed run; the weights it recorded are used again (the
    weights file may have moved or changed since), so a resumed run trains with the same loss."""
    names = list(class_names)
    targets = np.asarray(targets, dtype=np.int64)
    multilabel = targets.ndim == 2
    if multilabel:
        counts = targets.sum(axis=0).tolist()  # positives per label
    else:
        counts = np.bincount(targets, minlength=len(names)).tolist()
    spec = str(cfg.class_weights).strip()
    mode = spec if spec in ("none", "auto") else "file"
    weights: list[float] | None = None
    if recorded is not None and (Path(recorded) / RECORD).is_file():
        saved = json.loads((Path(recorded) / RECORD).read_text())["class_weights"]
        weights = None if saved["weights"] is None else [saved["weights"][c] for c in names]
    elif mode == "auto" and multilabel:
        weights = [float((len(targets) - n) / n) if n > 0 else 1.0 for n in counts]
    elif mode == "auto":
        weights = auto_class_weights(counts)
    elif mode == "file":
        weights = read_class_weights(spec, names)
    balance = ClassBalance(
        names, counts, mode, weights, spec if mode == "file" else None,
        cfg.sampler, cfg.loss, float(cfg.focal_gamma), multilabel,
    )  # fmt: skip
    _say(balance)
    return balance


def _say(b: ClassBalance) -> None:
    """The log lines of a run's class balance: the weights when there are any, the imbalance and
    what to do about it when nothing is done, and classes with very few training images."""
    corrected = b.weights is not None or b.sampler != "none" or b.loss != "ce"
    if b.weights is not None:
        how = "N / (K n_c), mean 1 over training images" if b.mode == "auto" else b.source
        if b.multilabel:
            how = "pos_weight, negatives / positives" if b.mode == "auto" else b.source
        pairs = ", ".join(f"{c} {w:.4g}" for c, w in zip(b.class_names, b.weights, strict=True))
        log.warning("class weights (%s): %s", how, pairs)
    if b.weights is not None and b.sampler == "balanced":
        log.warning(
            "class weights and the balanced sampler both favour rare classes: together they "
            "over-correct (each alone evens the classes out)"
        )
    # a multi-label run has no sampler or focal loss: only the pos_weight of --class-weights auto
    hint = MULTILABEL_HINT if b.multilabel else IMBALANCE_HINT
    few = [(c, n) for c, n in zip(b.class_names, b.train_counts, strict=True) if 0 < n < FEW_IMAGES]
    if few:
        listed = ", ".join(f"{c!r} ({n})" for c, n in few)
        log.warning(
            "classes with fewer than %d training images: %s; they are kept, but their test metrics "
            "will be noisy%s",
            FEW_IMAGES, listed, "" if corrected else f"; {hint}",
        )  # fmt: skip
    if b.imbalanced and not corrected:
        lo = int(np.argmin(b.train_counts))
        hi = int(np.argmax(b.train_counts))
        log.warning(
            "the training classes are imbalanced %s:1 (%r %d, %r %d images); %s",
            "inf" if math.isinf(b.ratio) else f"{b.ratio:.1f}",
            b.class_names[hi], b.train_counts[hi], b.class_names[lo], b.train_counts[lo], hint,
        )  # fmt: skip


def recorded_balance(run_dir: Path | None) -> dict[str, Any] | None:
    """What a run recorded in class_balance.json, or None (no run folder, or a run trained before
    the file existed)."""
    if run_dir is None or not (Path(run_dir) / RECORD).is_file():
        return None
    try:
        return json.loads((Path(run_dir) / RECORD).read_text())
    except (OSError, json.JSONDecodeError):
        return None
