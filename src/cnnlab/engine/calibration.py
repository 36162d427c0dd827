"""A classification run's calibration: temperature scaling and the out-of-domain check, fitted once
at the end of training (the classification plan's final step) and read back by predict, evaluate,
explain, serve and export. The maths is :mod:`cnnlab.metrics.calibration`; see docs/calibration.md.

What a run stores (training writes both; commands that read the run never rewrite them):

* ``calibration.json``: ``temperature`` (probabilities everywhere are ``softmax(logits / T)``),
  ``ece_before`` / ``ece_after`` and ``nll_before`` / ``nll_after`` on the validation split it was
  fitted on, ``bins`` (reliability data before and after), the test split's ECE before and after
  when there is one, and ``out_of_domain``: the score, its threshold and false-alarm rates;
* ``ood_gaussian.npz`` (``np.load(allow_pickle=False)``): the class means ``means (K, D)`` and the
  shared ``precision (D, D)`` of the penultimate-layer features the out-of-domain score measures.

Why the Mahalanobis distance of penultimate features (Lee et al. 2018) and not the maximum softmax
probability or the energy score: on the demo run (LeNet-5 on builtin:mnist-sample) the softmax of a
colour photo of a city is 0.948 for "7", above most digits, so no probability threshold separates
them; the energy score is a function of the same logits and fails the same way (a photo's large
activations give large logits). The features before the classifier, however, lie far from every
class cluster for photos, noise and blank images (docs/calibration.md has the measured numbers).

Both files belong to the weights they were fitted for: the record holds their sha256 and a run
whose best checkpoint changed since (none that training produced) is used without calibration and
a warning, never with another model's temperature.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cnnlab.errors import ConfigError

log = logging.getLogger(__name__)

FILE = "calibration.json"
GAUSSIAN_FILE = "ood_gaussian.npz"
SCORE = "mahalanobis"  # the out-of-domain score (see the module docstring for why)
SCORE_TEXT = (
    "squared Mahalanobis distance of the penultimate-layer features to the nearest class mean "
    "(shared covariance fitted on the training split)"
)
QUANTILE = 0.99  # threshold: 99 % of validation images score below it (~1 % false alarms)
MAX_FIT_SAMPLES = 20_000  # training images the class Gaussians are fitted on (a seeded sample)
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


# -- one forward pass: logits and penultimate features -------------------------------------------
class LogitsAndFeatures(nn.Module):
    """``forward(x) -> (N, K + D)``: the model's logits followed by the input of its final
    classifier (``get_classifier()``; what `cnnlab embed` writes), from one forward pass."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self._captured: list[torch.Tensor] = []

    def pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (N, K), features (N, D)), both float32."""
        self._captured.clear()
        hook = self.model.get_classifier().register_forward_hook(
            lambda _m, inputs, _out: self._captured.append(inputs[0])
        )
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        return logits.float(), self._captured[-1].float().flatten(1)  # N x K, N x D

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.pair(x), dim=1)


def has_features(model: Any) -> bool:
    """Whether ``model`` exposes its final classifier (every cnnlab zoo model does)."""
    return isinstance(model, nn.Module) and hasattr(model, "get_classifier")


class _Raw:
    """A task whose scores are the raw model outputs (logits ‖ features), for the predict loops."""

    def __init__(self, width: int) -> None:
        self.num_classes = width

    @staticmethod
    def scores(outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float()


class TemperatureScores:
    """A task's ``scores``: calibrated probabilities ``softmax(logits / T)`` (N x K, float32)."""

    def __init__(self, num_classes: int, temperature: float = 1.0) -> None:
        self.num_classes, self.temperature = num_classes, float(temperature)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits.float() / self.temperature).softmax(dim=1)


def split_outputs(
    model: nn.Module, loader: Any, num_classes: int, *, device: torch.device, precision: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits (N, K), features (N, D), targets (N,)) of an unshuffled loader; under DDP the
    batches are split over the ranks and gathered, so every rank gets the whole split."""
    from cnnlab.engine import distributed
    from cnnlab.engine.trainer import Trainer

    both = LogitsAndFeatures(model)
    width = num_classes + _width(model)
    if distributed.current().distributed:
        out, targets = distributed.predict_sharded(
            both, _Raw(width), loader, device=device, precision=precision
        )
    else:
        trainer = Trainer(both, _Raw(width), None, None, device=device, precision=precision)
        out, targets = trainer.predict(loader)
    out_np = out.numpy().astype(np.float64)
    return out_np[:, :num_classes], out_np[:, num_classes:], targets.numpy()


# -- fitting (training's final step) ---------------------------------------------------------------
def fit_calibration(
    model: nn.Module,
    loaders: dict[str, Any],
    num_classes: int,
    *,
    device: torch.device,
    precision: str,
    weights: Path,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The calibration record (calibration.json) and the class Gaussians (ood_gaussian.npz) from
    ``loaders`` {"val", "train", optional "test"}, all
    unshuffled and unaugmented."""
    from cnnlab.engine.checkpoint import sha256_file
    from cnnlab.metrics import calibration as cal
    from cnnlab.metrics.scores import expected_calibration_error, reliability_diagram

    assert has_features(model), "fit_calibration needs a model with get_classifier()"
    outputs = {
        name: split_outputs(model, loader, num_classes, device=device, precision=precision)
        for name, loader in loaders.items()
    }
    val_logits, val_features, val_targets = outputs["val"]
    t = cal.fit_temperature(val_logits, val_targets)
    before, after = cal.softmax_t(val_logits), cal.softmax_t(val_logits, t)

    def bins(probs: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        rel = reliability_diagram(targets, probs, n_bins=ECE_BINS)
        return {k: _plain(v) for k, v in rel.items()}

    record: dict[str, Any] = {
        "temperature": t,
        "fitted_on": {"split": "val", "num_samples": int(len(val_targets))},
        "ece_before": expected_calibration_error(val_targets, before, n_bins=ECE_BINS),
        "ece_after": expected_calibration_error(val_targets, after, n_bins=ECE_BINS),
        "nll_before": cal.nll_from_logits(val_logits, val_targets),
        "nll_after": cal.nll_from_logits(val_logits, val_targets, t),
        "ece_bins": ECE_BINS,
        "bins": {"before": bins(before, val_targets), "after": bins(after, val_targets)},
        "weights": {"file": Path(weights).name, "sha256": sha256_file(Path(weights))},
    }
    if t in (math.exp(cal.LOG_T_BOUNDS[0]), math.exp(cal.LOG_T_BOUNDS[1])):
        log.warning("temperature scaling hit the bound T=%.3g of its search", t)
    if "test" in outputs:
        test_logits, _, test_targets = outputs["test"]
        record["test"] = {
            "num_samples": int(len(test_targets)),
            "ece_before": expected_calibration_error(
                test_targets, cal.softmax_t(test_logits), n_bins=ECE_BINS
            ),
            "ece_after": expected_calibration_error(
                test_targets, cal.softmax_t(test_logits, t), n_bins=ECE_BINS
            ),
        }
    # the out-of-domain score: class Gaussians on training features, threshold on val
    _, train_features, train_targets = outputs["train"]
    gaussian = cal.fit_class_gaussians(train_features, train_targets, num_classes)
    val_scores = cal.mahalanobis_distance(val_features, **gaussian)
    threshold = cal.quantile_threshold(val_scores, QUANTILE)
    ood: dict[str, Any] = {
        "score": SCORE,
        "description": SCORE_TEXT,
        "higher_is": "further from the training data",
        "threshold": threshold,
        "rule": f"out of domain when the score > threshold, the {QUANTILE:.0%} quantile of "
        "the validation split's scores",
        "quantile": QUANTILE,
        "fitted_on": {"split": "train", "num_samples": int(len(train_targets))},
        "threshold_on": {"split": "val", "num_samples": int(len(val_scores))},
        "false_alarm_rate_val": float((val_scores > threshold).mean()),
        "file": GAUSSIAN_FILE,
    }
    if "test" in outputs:
        test_scores = cal.mahalanobis_distance(outputs["test"][1], **gaussian)
        ood["false_alarm_rate_test"] = float((test_scores > threshold).mean())
        ood["test_flagged"] = int((test_scores > threshold).sum())
        ood["test_num_samples"] = int(len(test_scores))
    record["out_of_domain"] = ood
    return record, gaussian


def _plain(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [None if isinstance(x, float) and math.isnan(x) else x for x in v.tolist()]
    return v


def write_calibration(
    run_dir: Path, record: dict[str, Any], gaussian: dict[str, np.ndarray] | None
) -> Path:
    """Write calibration.json (and ood_gaussian.npz) into the run folder (training only)."""
    from cnnlab.run import write_json

    if gaussian is not None:
        np.savez(
            Path(run_dir) / GAUSSIAN_FILE,
            means=gaussian["means"].astype(np.float64),
            precision=gaussian["precision"].astype(np.float64),
        )
    write_json(Path(run_dir) / FILE, record)
    return Path(run_dir) / FILE


# -- reading back -----------------------------------------------------------------------------------
@dataclass
class Calibration:
    """What a run's calibration applies: ``probs(logits)`` and ``out_of_domain(features)``."""

    temperature: float
    record: dict[str, Any]
    means: np.ndarray | None = None  # (K, D), NaN rows for classes without training samples
    precision: np.ndarray | None = None  # (D, D)

    @property
    def threshold(self) -> float | None:
        ood = self.record.get("out_of_domain") or {}
        return ood.get("threshold") if self.means is not None else None

    def probs(self, logits: np.ndarray) -> np.ndarray:
        from cnnlab.metrics.calibration import softmax_t

        return softmax_t(logits, self.temperature)

    def ood_scores(self, features: np.ndarray) -> np.ndarray | None:
        from cnnlab.metrics.calibration import mahalanobis_distance

        if self.means is None or self.precision is None:
            return None
        return mahalanobis_distance(features, self.means, self.precision)

    def describe(self) -> dict[str, Any]:
        """The out-of-domain rule in a JSON-able form (what predict / explain / serve show)."""
        ood = self.record.get("out_of_domain") or {}
        return {
            "score": ood.get("score"),
            "threshold": self.threshold,
            "false_alarm_rate_test": ood.get("false_alarm_rate_test"),
            "false_alarm_rate_val": ood.get("false_alarm_rate_val"),
        }

    def verdict(self, score: float) -> dict[str, Any]:
        """One input's out-of-domain verdict."""
        return {
            "score": SCORE,
            "value": float(score),
            "threshold": float(self.threshold),  # type: ignore[arg-type]
            "out_of_domain": bool(score > self.threshold),  # type: ignore[operator]
        }


def load_calibration(run_dir: Path | None, weights: Path | None = None) -> Calibration | None:
    """The run's calibration, or None: no run folder, a run trained before calibration existed
    (no calibration.json), or one fitted for other weights (a warning says so)."""
    from cnnlab.engine.checkpoint import sha256_file
    from cnnlab.run import read_json

    if run_dir is None or not (Path(run_dir) / FILE).is_file():
        return None
    record = read_json(Path(run_dir) / FILE)
    recorded = (record.get("weights") or {}).get("sha256")
    if weights is not None and recorded and recorded != sha256_file(Path(weights)):
        log.warning(
            "%s was fitted for other weights (%s) than %s: probabilities are left uncalibrated "
            "and there is no out-of-domain check",
            Path(run_dir) / FILE,
            (record.get("weights") or {}).get("file"),
            Path(weights).name,
        )
        return None
    t = float(record.get("temperature", 1.0))
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(
            f"{Path(run_dir) / FILE}: temperature {t} is not a positive number; delete the file "
            "to predict uncalibrated, or retrain"
        )
    means = precision = None
    gauss = Path(run_dir) / GAUSSIAN_FILE
    if record.get("out_of_domain") and gauss.is_file():
        with np.load(gauss, allow_pickle=False) as z:
            means, precision = z["means"], z["precision"]
    return Calibration(t, record, means, precision)


def from_metadata(meta: dict[str, Any]) -> Calibration | None:
    """The temperature an exported checkpoint carries (its metadata ``temperature``), or None."""
    if "temperature" not in meta:
        return None
    t = float(meta["temperature"])
    if not (math.isfinite(t) and t > 0):
        raise ConfigError(
            f"the checkpoint's temperature {t} is not a positive number; re-export it"
        )
    return Calibration(t, {"temperature": t})


def calibrated_fn(
    model: nn.Module, calibration: Calibration | None, device: torch.device, precision: str
) -> Any:
    """``fn(x (N, C, S, S) float32 array) -> probs`` or ``(probs, ood scores)``: the model's
    probabilities, calibrated when the run has a temperature, with the out-of-domain scores when
    it has the class Gaussians (predict_files' ``probs_fn``)."""
    from cnnlab.engine.trainer import autocast

    with_ood = calibration is not None and calibration.means is not None and has_features(model)
    both = LogitsAndFeatures(model)
    t = calibration.temperature if calibration is not None else 1.0

    def fn(x: np.ndarray) -> Any:
        images = torch.from_numpy(x).to(device)
        with torch.inference_mode(), autocast(device, precision):
            if not with_ood:
                return (model(images).float() / t).softmax(1).cpu().numpy()
            logits, features = both.pair(images)
        probs = (logits.float() / t).softmax(1).cpu().numpy()
        return probs, calibration.ood_scores(features.cpu().numpy().astype(np.float64))

    return fn


def _width(model: nn.Module) -> int:
    return int(model.get_classifier().in_features)
