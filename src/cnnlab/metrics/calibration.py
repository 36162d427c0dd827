"""Calibration and out-of-domain scores: pure functions on arrays (NumPy), no model in sight.

* :func:`fit_temperature` -- temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural
  Networks"): one scalar ``T > 0`` with ``probs = softmax(logits / T)``, chosen to minimise the
  negative log-likelihood of a held-out split. ``T > 1`` softens over-confident probabilities,
  ``T < 1`` sharpens under-confident ones; the argmax (and so accuracy, and every ranking metric
  per class such as ROC-AUC) is unchanged.
* :func:`softmax_t`, :func:`nll_from_logits` -- the calibrated probabilities and their NLL.
* Out-of-domain scores, higher = further from the training data:
  :func:`mahalanobis_distance` (squared Mahalanobis distance of penultimate-layer features to the
  nearest class mean under one shared covariance, Lee et al. 2018, fitted by
  :func:`fit_class_gaussians`), :func:`energy_score` (``-T log sum exp(logits / T)``, Liu et al.
  2020) and :func:`msp_score` (``1 - max softmax probability``, Hendrycks & Gimpel 2017).
* :func:`quantile_threshold` -- the threshold that keeps a share of in-domain scores below it.

ECE and reliability-diagram data are :func:`cnnlab.metrics.scores.expected_calibration_error`
and :func:`~cnnlab.metrics.scores.reliability_diagram` (equal-width bins).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "FEW_SAMPLES_FIX",
    "LOG_T_BOUNDS",
    "energy_score",
    "fit_class_gaussians",
    "fit_temperature",
    "mahalanobis_distance",
    "msp_score",
    "nll_from_logits",
    "quantile_threshold",
    "softmax_t",
]

#: the search interval of log T: T in [0.01, 100] covers every useful temperature (a model that
#: needs more is not calibrated by one scalar; the fit then sits on the bound and says so)
LOG_T_BOUNDS = (math.log(0.01), math.log(100.0))

#: what to do about a temperature fitted on too few validation images: one wording for training's
#: warning (cnnlab.engine.calibration) and the report's caution (cnnlab.report.calibration_section);
#: kept here, beside the fit, so the report reads it without importing the engine (and torch)
FEW_SAMPLES_FIX = "give the validation split more images (a larger --val-fraction)"


def _logits_targets(logits: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets).astype(np.int64)
    if z.ndim != 2 or t.shape != (len(z),) or len(z) == 0:
        raise ValueError(
            f"logits must be (N, K) and targets (N,) with N >= 1, got {z.shape} and {t.shape}"
        )
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    if t.min() < 0 or t.max() >= z.shape[1]:
        raise ValueError(f"targets must be in [0, {z.shape[1]}), got [{t.min()}, {t.max()}]")
    return z, t


def _logsumexp(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def softmax_t(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T) along axis 1, float64 (N, K)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll_from_logits(logits: Any, targets: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood -(1/N) sum_i log softmax(z_i / T)[y_i], in nats."""
    z, t = _logits_targets(logits, targets)
    z = z / float(temperature)
    return float((_logsumexp(z) - z[np.arange(len(t)), t]).mean())


def fit_temperature(logits: Any, targets: Any, *, tol: float = 1e-7) -> float:
    """The T > 0 minimising :func:`nll_from_logits` on (logits, targets).

    NLL is convex in 1 / T, hence unimodal in log T: a golden-section search over
    :data:`LOG_T_BOUNDS` finds the minimum to ``tol`` in log T (about 40 NLL evaluations) with
    neither gradients nor a start value (tested against a grid and scipy's bounded Brent search;
    NumPy only, so training's final step imports no optimiser).
    """
    z, t = _logits_targets(logits, targets)
    rows = np.arange(len(t))

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        return float((_logsumexp(s) - s[rows, t]).mean())

    ratio = (math.sqrt(5) - 1) / 2  # 0.618...: each step keeps this share of the interval
    a, b = LOG_T_BOUNDS
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > tol:
        if fc <= fd:  # the minimum lies in [a, d]
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:  # in [c, b]
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return float(math.exp((a + b) / 2))


# -- out-of-domain scores (higher = further from the training data) ------------------------------
def fit_class_gaussians(
    features: Any, targets: Any, num_classes: int, *, shrinkage: float = 1e-3
) -> dict[str, np.ndarray]:
    """Class means and one shared (within-class) covariance of (N, D) features, for
    :func:`mahalanobis_distance`.

    The covariance is ``S + shrinkage * mean(diag S) * I`` (a ridge, so that D larger than the
    number of samples, or dead ReLU units, still give an invertible matrix); its inverse is
    returned as ``precision (D, D)``. Classes without samples get NaN means and are skipped by the
    distance. Returns ``{"means" (K, D), "precision" (D, D)}`` in float64.
    """
    f = np.asarray(features, dtype=np.float64)
    t = np.asarray(targets).astype(np.int64)
    if f.ndim != 2 or t.shape != (len(f),) or len(f) < 2:
        raise ValueError(f"features must be (N, D) with N >= 2 and targets (N,), got {f.shape}")
    means = np.full((num_classes, f.shape[1]), np.nan)
    centred = np.empty_like(f)
    for k in range(num_classes):
        rows = t == k
        if rows.any():
            means[k] = f[rows].mean(axis=0)
            centred[rows] = f[rows] - means[k]
    cov = centred.T @ centred / len(f)  # (D, D)
    ridge = shrinkage * max(float(np.mean(np.diag(cov))), 1e-12)
    cov[np.diag_indices_from(cov)] += ridge
    precision = np.linalg.inv(cov)
    return {"means": means, "precision": (precision + precision.T) / 2}


def mahalanobis_distance(features: Any, means: Any, precision: Any) -> np.ndarray:
    """(N,) squared Mahalanobis distance of each feature row to its nearest class mean:
    min_k (f - mu_k)^T P (f - mu_k), classes with NaN means skipped."""
    f = np.asarray(features, dtype=np.float64)
    mu = np.asarray(means, dtype=np.float64)
    mu = mu[~np.isnan(mu).any(axis=1)]
    p = np.asarray(precision, dtype=np.float64)
    # (f - mu)^T P (f - mu) = f P f - 2 f P mu + mu P mu, for all pairs at once: (N, K)
    fp = f @ p
    d = (fp * f).sum(1)[:, None] - 2 * fp @ mu.T + ((mu @ p) * mu).sum(1)[None, :]
    return np.maximum(d.min(axis=1), 0.0)


def energy_score(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """(N,) negative free energy with the sign flipped so that higher = more out of domain:
    -T log sum_k exp(z_k / T)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    return -float(temperature) * _logsumexp(z)


def msp_score(probs: Any) -> np.ndarray:
    """(N,) 1 - max_k p_k: higher = less confident = more likely out of domain."""
    return 1.0 - np.asarray(probs, dtype=np.float64).max(axis=1)


def quantile_threshold(scores: Any, quantile: float) -> float:
    """The ``quantile`` (e.g. 0.99) of in-domain scores: about 1 - quantile of in-domain inputs
    score above it (the false-alarm rate aimed for). Linear interpolation (NumPy's default)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0 or not 0.0 < quantile < 1.0:
        raise ValueError(f"need scores and a quantile in (0, 1), got {s.size} and {quantile}")
    return float(np.quantile(s, quantile))
