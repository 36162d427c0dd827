"""Input checks and the undefined-metric policy shared by every metrics module (no metric here)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np


class UndefinedMetricWarning(UserWarning):
    """A metric's denominator is zero; the value is reported as None (NaN in arrays)."""


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy array from a NumPy array, a list, or a torch tensor (detached, moved to CPU).

    torch is not imported here: anything with ``.detach()`` and ``.cpu()`` is treated as a tensor,
    so this module stays importable (and fast to import) without torch.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            x = x.float()  # NumPy has no bfloat16
        return x.numpy()
    return np.asarray(x)


def check_labels(
    labels: Any, num_classes: int | None = None, *, name: str = "targets"
) -> np.ndarray:
    """1-D int64 class indices, checked to lie in ``[0, num_classes)``.

    Integer-valued floats (e.g. ``1.0``) are accepted; anything else raises ``ValueError``.
    """
    arr = to_numpy(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be integer class indices, got dtype {arr.dtype}")
        if np.any(arr != np.round(arr)):
            raise ValueError(f"{name} must be integer class indices, got non-integer values")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} contains a negative class index ({int(arr.min())})")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise ValueError(
            f"{name} contains class index {int(arr.max())} but num_classes={num_classes} "
            f"(valid indices are 0..{num_classes - 1})"
        )
    return arr


def names_for(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [str(k) for k in range(num_classes)]
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"got {len(names)} class names for {num_classes} classes")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class names must be unique; repeated: {dupes}")
    return names


def emit(message: str, sink: list[str] | None, stacklevel: int = 3) -> None:
    """Send an undefined-metric message to ``sink`` (the report collects them) or warn now."""
    if sink is None:
        warnings.warn(message, UndefinedMetricWarning, stacklevel=stacklevel)
    else:
        sink.append(message)


def quote(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)
