"""A classification run's calibration: temperature scaling and the out-of-domain check, fitted once
at the end of training (the classification plan's final step) and read back by predict, evaluate,
explain, serve and export. The maths is :mod:`cnnlab.metrics.calibration`; see docs/calibration.md.

What a run stores in ``calibration.json`` (training writes it; commands that read the run never
rewrite it): ``temperature`` (probabilities everywhere are ``softmax(logits / T)``), ``ece_before``
/ ``ece_after`` and ``nll_before`` / ``nll_after`` on the validation split it was fitted on,
``bins`` (reliability data before and after), the test split's ECE before and after when there is
one, and ``out_of_domain``: the score, its threshold and its false-alarm rates.

Why the energy score (Liu et al. 2020, ``-log sum_k exp(z_k)`` of the raw logits; higher = further
from the training data). Measured on the demo run (LeNet-5 on builtin:mnist-sample, threshold at
the 99th percentile of the validation scores; docs/calibration.md has the table):

* maximum softmax probability flags noise and the flower photo but not the city photo (top
  probability 0.939 for "7") nor the all-white image (0.904 for "1");
* the Mahalanobis distance of the penultimate features (84-d) to the nearest class mean flags
  none of the four: a photo squeezed to 28 x 28 grey pixels lands nearer the digit clusters than
  many real digits do; on the convolutional features it flags two of four;
* the energy flags all four (the logits of digits are large for one class; those of photos,
  noise and blank images are small for all) and 2.8 % of the in-domain test digits. The city
  photo is near the threshold: the same demo trained on an AVX2 CPU (other float kernels, a
  slightly different model) misses it (-7.43 against -6.42) and flags the other three by 3+.

It needs nothing but the logits, so an exported ONNX file carries the check too (its threshold in
the file's metadata).

The record belongs to the weights it was fitted for: it holds their sha256, and a run whose best
checkpoint changed since (none that training produced) is used without calibration and a
warning, never with another model's temperature.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

FILE = "calibration.json"
SCORE = "energy"  # the out-of-domain score (see the module docstring for why)
SCORE_TEXT = "energy score -log sum_k exp(logit_k) of the raw logits (higher: less like training)"
QUANTILE = 0.99  # threshold: 99 % of validation images score below it (~1 % false alarms)
# Fewer validation images than this, a fitted T is not to be trusted (a 6-image split gave T = 19).
# T minimises the NLL of the split: on a few images that the model mostly gets right (or one it
# gets confidently wrong) the optimum runs far off, and nothing averages it out. Guo et al. (2017)
# fit T on 5,000+ images; with < 50 images the 15-bin ECE measuring the fit has ~3 images a bin,
# and the 99 % out-of-domain quantile is simply the largest score. Per class: below 2 images a
# class, some classes' logits are not seen at all by the fit.
FEW_SAMPLES = 50
FEW_PER_CLASS = 2
ECE_BINS = 15  # equal-width confidence bins (cnnlab.metrics.scores.DEFAULT_ECE_BINS)


def check_min_confidence(value: Any) -> float | None:
    """--min-confidence P: a probability in [0, 1] (None: not given)."""
    if value is None:
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--min-confidence {value}: not a number; give a probability in [0, 1], e.g. 0.5"
        ) from None
    if not (math.isfinite(p) and 0.0 <= p <= 1.0):
        raise ConfigError(
            f"--min-confidence {value}: must be a probability in [0, 1] (the top class's "
            "calibrated probability below which the answer is `unknown`), e.g. 0.5"
        )
    return p


# -- logits of a split ---------------------------------------------------------------------------
class _Raw:
    """A task whose scores are the raw logits (float32), for the predict loops."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes

    @staticmethod
    def scores(logits: torch.Tensor) -> torch.Tensor:
        return logits.float()


class TemperatureScores:
    """A task's ``scores``: calibrated probabilities ``softmax(logits / T)`` (N x K, float32)."""

    def __init__(self, num_classes: int, temperature: float = 1.0) -> None:
        self.num_classes, self.temperature = num_classes, float(temperature)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.float() / self.temperature).softmax(dim=1)


def split_logits(
    model: nn.Module, loader: Any, num_classes: int, *, device: torch.device, precision: str
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, K) float64, targets (N,)) of an unshuffled loader; under DDP the batches are
    split over the ranks and gathered, so every rank gets the whole split."""
    from cnnlab.engine import distributed
    from cnnlab.engine.trainer import Trainer

    if distributed.current().distributed:
        logits, targets = distributed.predict_sharded(
            model, _Raw(num_classes), loader, device=device, precision=precision
        )
    else:
        trainer = Trainer(model, _Raw(num_classes), None, None, device=device, precision=precision)
        logits, targets = trainer.predict(loader)
    return logits.numpy().astype(np.float64), targets.numpy()


# -- fitting (training's final step) ---------------------------------------------------------------
def fit_calibration(
    model: nn.Module,
    loaders: dict[str, Any],
    num_classes: int,
    *,
    device: torch.device,
    precision: str,
    weights: Path,
    logits: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """The calibration record (calibration.json) from unshuffled, unaugmented ``loaders``
    {"val", optional "test"}: T and the out-of-domain threshold are fitted on "val"; "test" only
    measures (its ECE before / after, the false-alarm rate on in-domain images).

    ``logits``: {split: (logits, targets)} the caller has already computed with
    :func:`split_logits` (training scores the test split once for this and its metrics)."""
    from cnnlab.engine.checkpoint import sha256_file
    from cnnlab.metrics import calibration as cal
    from cnnlab.metrics.scores import expected_calibration_error, reliability_diagram

    outputs = dict(logits or {})
    for name, loader in loaders.items():
        if name not in outputs:
            outputs[name] = split_logits(
                model, loader, num_classes, device=device, precision=precision
            )
    val_logits, val_targets = outputs["val"]
    t = cal.fit_temperature(val_logits, val_targets)
    reliable_from = max(FEW_SAMPLES, FEW_PER_CLASS * num_classes)  # images; see FEW_SAMPLES
    few = len(val_targets) < reliable_from
    if few and _is_main():  # DDP: every rank fits, one says it
        log.warning(
            "calibration: temperature T=%.3g fitted on only %d validation image(s) (reliable from "
            "%d: %d, and %d per class); calibrated probabilities and the out-of-domain threshold "
            "may be far off: %s",
            t, len(val_targets), reliable_from, FEW_SAMPLES, FEW_PER_CLASS, cal.FEW_SAMPLES_FIX,
        )  # fmt: skip
    before, after = cal.softmax_t(val_logits), cal.softmax_t(val_logits, t)

    def ece(targets: np.ndarray, probs: np.ndarray) -> float:
        return expected_calibration_error(targets, probs, n_bins=ECE_BINS)

    def bins(targets: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
        rel = reliability_diagram(targets, probs, n_bins=ECE_BINS)
        return {k: _plain(v) for k, v in rel.items()}

    record: dict[str, Any] = {
        "temperature": t,
        "fitted_on": {
            "split": "val",
            "num_samples": int(len(val_targets)),
            "few_samples": few,  # True: fewer than reliable_from images, T is unreliable
            "reliable_from": reliable_from,
        },
        "ece_before": ece(val_targets, before),
        "ece_after": ece(val_targets, after),
        "nll_before": cal.nll_from_logits(val_logits, val_targets),
        "nll_after": cal.nll_from_logits(val_logits, val_targets, t),
        "ece_bins": ECE_BINS,
        "bins": {"before": bins(val_targets, before), "after": bins(val_targets, after)},
        "weights": {"file": Path(weights).name, "sha256": sha256_file(Path(weights))},
    }
    if t in (math.exp(cal.LOG_T_BOUNDS[0]), math.exp(cal.LOG_T_BOUNDS[1])):
        log.warning("temperature scaling hit the bound T=%.3g of its search", t)
    val_scores = cal.energy_score(val_logits)
    threshold = cal.quantile_threshold(val_scores, QUANTILE)
    ood: dict[str, Any] = {
        "score": SCORE,
        "description": SCORE_TEXT,
        "threshold": threshold,
        "rule": f"out of domain when the score > threshold, the {QUANTILE:.0%} quantile of the "
        "validation split's scores",
        "quantile": QUANTILE,
        "threshold_on": {"split": "val", "num_samples": int(len(val_scores))},
        "false_alarm_rate_val": float((val_scores > threshold).mean()),
    }
    if "test" in outputs:
        test_logits, test_targets = outputs["test"]
        record["test"] = {
            "num_samples": int(len(test_targets)),
            "ece_before": ece(test_targets, cal.softmax_t(test_logits)),
            "ece_after": ece(test_targets, cal.softmax_t(test_logits, t)),
        }
        flagged = cal.energy_score(test_logits) > threshold
        ood["false_alarm_rate_test"] = float(flagged.mean())
        ood["test_flagged"] = int(flagged.sum())
        ood["test_num_samples"] = int(len(flagged))
    record["out_of_domain"] = ood
    return record


def _is_main() -> bool:
    from cnnlab.engine import distributed

    return distributed.is_main()


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()]
    return v


def write_calibration(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write calibration.json into the run folder (training only)."""
    from cnnlab.run import write_json

    write_json(Path(run_dir) / FILE, record)
    return Path(run_dir) / FILE


# -- reading back -----------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What a run's calibration applies: ``probs(logits)`` and ``ood_scores(logits)``."""

    temperature: float
    threshold: float | None = None  # out of domain when the score is above it; None: no check
    record: dict[str, Any] = field(default_factory=dict)  # calibration.json

    def probs(self, logits: np.ndarray) -> np.ndarray:
        from cnnlab.metrics.calibration import softmax_t

        return softmax_t(logits, self.temperature)

    @staticmethod
    def ood_scores(logits: np.ndarray) -> np.ndarray:
        """(N,) energy scores of raw (not temperature-scaled) logits."""
        from cnnlab.metrics.calibration import energy_score

        return energy_score(logits)

    def describe(self) -> dict[str, Any]:
        """The out-of-domain rule in a JSON-able form (what serve's /api/info shows)."""
        ood = self.record.get("out_of_domain") or {}
        return {
            "score": SCORE,
            "threshold": self.threshold,
            "false_alarm_rate_test": ood.get("false_alarm_rate_test"),
            "false_alarm_rate_val": ood.get("false_alarm_rate_val"),
        }

    def verdict(self, score: float) -> dict[str, Any]:
        """One input's out-of-domain verdict (needs a threshold)."""
        assert self.threshold is not None
        return {
            "score": SCORE,
            "value": float(score),
            "threshold": float(self.threshold),
            "out_of_domain": bool(score > self.threshold),
        }

    def export_metadata(self) -> dict[str, Any]:
        """What an exported file carries: ``temperature`` and the out-of-domain rule."""
        meta: dict[str, Any] = {"temperature": self.temperature}
        if self.threshold is not None:
            meta["out_of_domain"] = self.describe()
        return meta


def load_calibration(run_dir: Path | None, weights: Path | None = None) -> Calibration | None:
    """The run's calibration, or None: no run folder, a run trained before calibration existed
    (no calibration.json), or one fitted for other weights (a warning says so)."""
    from cnnlab.engine.checkpoint import sha256_file
    from cnnlab.run import read_json

    where = Path(run_dir) / FILE if run_dir is not None else None
    if where is None or not where.is_file():
        return None
    record = read_json(where)
    recorded = (record.get("weights") or {}).get("sha256")
    if weights is not None and recorded and recorded != sha256_file(Path(weights)):
        log.warning(
            "%s was fitted for other weights (%s) than %s: probabilities are left uncalibrated "
            "and there is no out-of-domain check",
            where,
            (record.get("weights") or {}).get("file"),
            Path(weights).name,
        )
        return None
    ood = record.get("out_of_domain") or {}
    return _checked(record.get("temperature", 1.0), ood.get("threshold"), where, record)


def from_metadata(meta: dict[str, Any]) -> Calibration | None:
    """The calibration an exported file carries (its metadata ``temperature`` and
    ``out_of_domain``), or None."""
    if "temperature" not in meta:
        return None
    ood = meta.get("out_of_domain") or {}
    return _checked(meta["temperature"], ood.get("threshold"), "the exported file's metadata")


def _checked(
    temperature: Any, threshold: Any, where: Any, record: dict[str, Any] | None = None
) -> Calibration:
    try:
        t = float(temperature)
        thr = None if threshold is None else float(threshold)
    except (TypeError, ValueError):
        t, thr = math.nan, None
    if not (math.isfinite(t) and t > 0) or (thr is not None and not math.isfinite(thr)):
        raise ConfigError(
            f"{where}: temperature {temperature!r} / threshold {threshold!r} are not valid "
            "numbers; retrain (or re-export) the run, or delete calibration.json to predict "
            "uncalibrated"
        )
    return Calibration(t, thr, record or {"temperature": t})


def calibrated_fn(
    model: Any,
    calibration: Calibration | None,
    device: torch.device,
    precision: str,
    tta: tuple[str, ...] = (),
) -> Any:
    """``fn(x (N, C, S, S) float32 array) -> probs`` or ``(probs, ood scores)``: the model's
    probabilities, calibrated when the run has a temperature, with the out-of-domain scores when
    it has a threshold (predict_files' ``probs_fn``). ``tta`` (cnnlab.engine.tta): the mean of the
    views' calibrated probabilities; the out-of-domain score stays the original view's."""
    from cnnlab.engine.trainer import autocast
    from cnnlab.engine.tta import average_probs

    t = calibration.temperature if calibration is not None else 1.0
    with_ood = calibration is not None and calibration.threshold is not None

    def fn(x: np.ndarray) -> Any:
        with torch.inference_mode(), autocast(device, precision):
            probs, logits = average_probs(model, torch.from_numpy(x).to(device), tta, t)
        probs = probs.cpu().numpy()
        if not with_ood:
            return probs
        return probs, Calibration.ood_scores(logits.cpu().numpy().astype(np.float64))

    return fn
