"""The convolution lab: small NumPy reference operations and a step-by-step explainer.

Everything here works on plain NumPy arrays (1-D signals, 2-D images) and is meant to be read.
It follows the lecture's hospital analogy (docs/convolution.md walks through it):

* **convolution** (``op="convolution"``) reverses the kernel before sliding it, as
  ``numpy.convolve`` / ``scipy.signal.convolve`` and the integral ``(f*g)(t) = ∫ f(τ) g(t-τ) dτ``;
* **correlation** (``op="correlation"``) slides the kernel without reversing it. This is what a
  CNN "convolution" layer computes (``torch.nn.functional.conv1d`` / ``conv2d``).

Geometry, per axis, for an input of length ``n`` and a kernel of length ``k``::

    k_eff = dilation * (k - 1) + 1                   # dilated kernel size
    xp    = x zero-padded by (pad_left, pad_right)
    m     = (n + pad_left + pad_right - k_eff) // stride + 1          # output length
    correlation: y[i] = sum_k w[k]       * xp[i*stride + k*dilation]
    convolution: y[i] = sum_k w[K-1-k]   * xp[i*stride + k*dilation]  # kernel reversed

(2-D: the same along rows and columns; the 2-D convolution kernel is rotated 180 degrees.)

``mode`` chooses the padding (``padding`` adds explicit zeros and is only allowed with
``mode="valid"``, because "full" and "same" already decide the padding; a contradictory pair
raises ``ConfigError``):

* ``"valid"``: ``pad_left = pad_right = padding`` (0 by default): the kernel stays inside.
* ``"full"``: ``pad_left = pad_right = k_eff - 1``: every partial overlap; at stride 1 the
  output has ``n + k_eff - 1`` values (numpy's "full"); at stride s it is ``full[::s]``.
* ``"same"``: output length ``ceil(n / stride)``. Total padding
  ``max((ceil(n/stride) - 1) * stride + k_eff - n, 0)``, split as ``pad_left = total // 2``
  and the extra zero (when the total is odd) on the right (bottom in 2-D). At stride 1 this is
  exactly ``torch`` ``padding="same"`` (total ``k_eff - 1``); torch refuses "same" with
  stride > 1, and we then follow TensorFlow's "SAME" rule, which also pads right/bottom.
  ``numpy.convolve`` and ``scipy.signal`` "same" agree with this for odd ``k_eff``; for an
  even ``k_eff`` they put the extra zero on the left, so their result is shifted one
  position: ours is ``full[k_eff//2 : k_eff//2 + n]``, theirs ``full[(k_eff-1)//2 : ...]``.

The explainer (:func:`explain_convolution1d` / :func:`explain_convolution2d`) lists, for each
output position, which inputs meet which weights, their products and the sum: the lecture's
"flipped patient list walking through the rooms" table (:func:`format_steps`).
"""

from __future__ import annotations

import logging
import math
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnlab.errors import ConfigError, close_matches

if TYPE_CHECKING:  # rich is only needed for the CLI table
    from rich.table import Table

logger = logging.getLogger(__name__)

__all__ = [
    "LECTURE_EXAMPLES",
    "MODES",
    "OPS",
    "LabResult",
    "LectureExample",
    "Step",
    "Term",
    "avg_pool2d",
    "convolve1d",
    "convolve2d",
    "explain_convolution1d",
    "explain_convolution2d",
    "flatten",
    "format_array",
    "format_steps",
    "load_array_image",
    "max_pool2d",
    "parse_array",
    "pick_positions",
    "relu",
    "run_example",
    "run_lab",
    "steps_table",
]

OPS = ("convolution", "correlation")
MODES = ("full", "valid", "same")

# An int, a pair of ints, or command-line text such as "2", "2,1" or "2x1".
IntOrPair: TypeAlias = "int | Sequence[int] | str"
ArrayLike: TypeAlias = "np.ndarray | Sequence[Any] | str"


# --------------------------------------------------------------------------------------------
# Option checking and geometry (shared by the operations and the explainer)
# --------------------------------------------------------------------------------------------


def _check_choice(value: str, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ConfigError(
            f"unknown {name} {value!r}; choose one of: {', '.join(choices)}"
            + close_matches(str(value), choices)
        )
    return value


def _as_ints(value: IntOrPair, name: str, ndim: int, minimum: int) -> tuple[int, ...]:
    """``value`` as ``ndim`` ints >= ``minimum``: an int (same on every axis), a sequence of
    ``ndim`` ints, or text "2" / "2,1" / "2x1" / "2 1" from the command line."""
    items: list[Any]
    if isinstance(value, str):
        items = [part for part in re.split(r"[\s,x×]+", value.strip()) if part]
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        items = [value]
    elif isinstance(value, np.ndarray):
        items = value.reshape(-1).tolist()
    elif isinstance(value, Sequence):
        items = list(value)
    else:
        items = [value]
    shape_hint = "an integer" if ndim == 1 else f"an integer or {ndim} integers like '2,1'"
    if len(items) == 1:
        items = items * ndim
    if len(items) != ndim:
        raise ConfigError(
            f"{name}={value!r}: expected {shape_hint} (one per axis of a {ndim}-D input)"
        )
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                item = int(item)
            except ValueError:
                raise ConfigError(
                    f"{name}={value!r}: {item!r} is not a whole number; expected {shape_hint}"
                ) from None
        if isinstance(item, bool) or not isinstance(item, (int, np.integer)):
            raise ConfigError(f"{name}={value!r}: expected {shape_hint}, got {item!r}")
        if item < minimum:
            raise ConfigError(f"{name}={value!r}: every value must be >= {minimum}")
        out.append(int(item))
    return tuple(out)


def _as_real_array(value: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """A real (int or float) ``ndim``-D array; text is parsed with :func:`parse_array`."""
    array = parse_array(value) if isinstance(value, str) else np.asarray(value)
    if array.dtype == bool:
        array = array.astype(np.int64)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ConfigError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != ndim:
        what = "a list of numbers like '3 2 1'" if ndim == 1 else "rows like '1 0 1; 0 1 0'"
        raise ConfigError(f"{name} must be {ndim}-D ({what}), got shape {array.shape}")
    if array.size == 0:
        raise ConfigError(f"{name} is empty; give at least one number")
    return array


@dataclass(frozen=True)
class _Geometry:
    """Everything about *where* the kernel goes; the values come later."""

    op: str
    mode: str
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    kernel_eff: tuple[int, ...]  # dilation * (k - 1) + 1 per axis
    pads: tuple[tuple[int, int], ...]  # (left, right) zeros per axis, mode and padding resolved
    out_shape: tuple[int, ...]


def _geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    *,
    op: str,
    mode: str,
    stride: IntOrPair,
    padding: IntOrPair,
    dilation: IntOrPair,
) -> _Geometry:
    ndim = len(x_shape)
    _check_choice(op, "op", OPS)
    _check_choice(mode, "mode", MODES)
    strides = _as_ints(stride, "stride", ndim, 1)
    paddings = _as_ints(padding, "padding", ndim, 0)
    dilations = _as_ints(dilation, "dilation", ndim, 1)
    if mode != "valid" and any(paddings):
        # "full" and "same" already choose the padding; adding more on top would give a third,
        # unnamed geometry, so we refuse rather than guess (torch refuses padding="same" + ints).
        raise ConfigError(
            f"padding={padding!r} cannot be combined with mode={mode!r}: the mode already "
            "chooses the padding. Use mode='valid' with padding=..., or drop padding."
        )
    axis_names = ("length",) if ndim == 1 else ("rows", "columns")
    kernel_eff, pads, out_shape = [], [], []
    for axis in range(ndim):
        n, k, s, d = x_shape[axis], w_shape[axis], strides[axis], dilations[axis]
        k_eff = d * (k - 1) + 1
        if mode == "valid":
            left = right = paddings[axis]
        elif mode == "full":
            left = right = k_eff - 1
        else:  # same: ceil(n / s) outputs; the odd extra zero goes right/bottom (torch, TF)
            total = max((math.ceil(n / s) - 1) * s + k_eff - n, 0)
            left, right = total // 2, total - total // 2
        if n + left + right < k_eff:
            raise ConfigError(
                f"the kernel ({axis_names[axis]}: {k}, dilation {d}, so {k_eff} wide) does not fit "
                f"in the input ({axis_names[axis]}: {n}, padding {left}+{right}) with "
                f"mode={mode!r}: use mode='full' or 'same', more padding, or a smaller kernel"
            )
        kernel_eff.append(k_eff)
        pads.append((left, right))
        out_shape.append((n + left + right - k_eff) // s + 1)
    return _Geometry(
        op=op,
        mode=mode,
        stride=strides,
        padding=paddings,
        dilation=dilations,
        kernel_shape=tuple(w_shape),
        kernel_eff=tuple(kernel_eff),
        pads=tuple(pads),
        out_shape=tuple(out_shape),
    )


def _windows(x: np.ndarray, geo: _Geometry) -> np.ndarray:
    """Strided, dilated windows of the zero-padded input: shape ``out_shape + kernel_shape``.

    A read-only view (no copy) except for the padding: window ``[i..., j...]`` holds
    ``xp[i*stride + j*dilation]`` per axis.
    """
    padded = np.pad(x, geo.pads)
    windows = sliding_window_view(padded, geo.kernel_eff)  # (L - k_eff + 1)... x k_eff...
    steps = tuple(slice(None, None, s) for s in geo.stride)
    taps = tuple(slice(None, None, d) for d in geo.dilation)
    return windows[steps + taps]


def _kernel_as_used(w: np.ndarray, op: str) -> np.ndarray:
    # Convolution reverses the kernel on every axis (a 180-degree rotation in 2-D).
    return np.flip(w) if op == "convolution" else w


def _result_dtype(x: np.ndarray, w: np.ndarray) -> np.dtype:
    return np.result_type(x.dtype, w.dtype)


def _convolve(x: np.ndarray, w: np.ndarray, geo: _Geometry) -> np.ndarray:
    windows = _windows(x, geo)
    kernel = _kernel_as_used(w, geo.op)
    # Sum over the kernel axes of window * kernel: one matrix product, no loop over outputs.
    out = np.tensordot(windows, kernel, axes=w.ndim)
    return np.asarray(out, dtype=_result_dtype(x, w)).reshape(geo.out_shape)


# --------------------------------------------------------------------------------------------
# The operations
# --------------------------------------------------------------------------------------------


def convolve1d(
    x: ArrayLike,
    w: ArrayLike,
    *,
    op: str = "convolution",
    mode: str = "valid",
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> np.ndarray:
    """1-D convolution or correlation of signal ``x`` (n,) with kernel ``w`` (k,).

    ``op="convolution"``: ``y[i] = sum_k w[K-1-k] * xp[i*stride + k*dilation]`` (kernel
    reversed; ``numpy.convolve``). ``op="correlation"``: ``y[i] = sum_k w[k] *
    xp[i*stride + k*dilation]`` (``torch.nn.functional.conv1d``, a CNN layer). ``xp`` is ``x``
    zero-padded as ``mode`` / ``padding`` say (module docstring). Returns shape ``(m,)`` with
    ``m = (n + pad_left + pad_right - k_eff) // stride + 1``; dtype ``result_type(x, w)``.

    Raises ``ConfigError`` for an unknown op/mode, stride/dilation < 1, padding < 0, padding with
    mode "full"/"same", or a kernel that does not fit.
    """
    x_arr = _as_real_array(x, "x", 1)
    w_arr = _as_real_array(w, "w", 1)
    geo = _geometry(
        x_arr.shape,
        w_arr.shape,
        op=op,
        mode=mode,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return _convolve(x_arr, w_arr, geo)


def convolve2d(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    op: str = "convolution",
    mode: str = "valid",
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
) -> np.ndarray:
    """2-D convolution or correlation of ``image`` (H, W) with ``kernel`` (KH, KW).

    ``y[i, j] = sum_{a,b} kernel'[a, b] * xp[i*sh + a*dh, j*sw + b*dw]`` where ``kernel'`` is the
    kernel rotated 180 degrees for ``op="convolution"`` (``scipy.signal.convolve2d``) and the
    kernel itself for ``op="correlation"`` (``torch.nn.functional.conv2d``). ``stride``,
    ``padding`` and ``dilation`` are an int or a (rows, columns) pair. Returns shape
    ``(OH, OW)``, each as in :func:`convolve1d`.
    """
    x_arr = _as_real_array(image, "image", 2)
    w_arr = _as_real_array(kernel, "kernel", 2)
    geo = _geometry(
        x_arr.shape,
        w_arr.shape,
        op=op,
        mode=mode,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return _convolve(x_arr, w_arr, geo)


def relu(x: ArrayLike) -> np.ndarray:
    """Rectified linear unit ``R(z) = max(0, z)``, element-wise; same shape and dtype."""
    array = np.asarray(x)
    return np.maximum(array, np.zeros((), dtype=array.dtype))


def _pool(x: ArrayLike, size: IntOrPair, stride: IntOrPair | None, name: str) -> np.ndarray:
    """Windows for pooling over the last two axes: shape ``(..., OH, OW, KH, KW)``."""
    array = np.asarray(x)
    if array.ndim < 2:
        raise ConfigError(f"{name} needs an array with at least 2 axes (H, W), got {array.shape}")
    sizes = _as_ints(size, "size", 2, 1)
    strides = sizes if stride is None else _as_ints(stride, "stride", 2, 1)
    height, width = array.shape[-2:]
    if sizes[0] > height or sizes[1] > width:
        raise ConfigError(
            f"{name} window {sizes[0]}x{sizes[1]} is larger than the {height}x{width} input"
        )
    windows = sliding_window_view(array, sizes, axis=(-2, -1))
    # Windows that would run past the edge are dropped (torch's default ceil_mode=False).
    return windows[..., :: strides[0], :: strides[1], :, :]


def max_pool2d(x: ArrayLike, size: IntOrPair = 2, stride: IntOrPair | None = None) -> np.ndarray:
    """Max pooling over the last two axes (H, W) with ``size`` windows every ``stride``
    (default: ``size``, non-overlapping). Output ``(..., (H - kh)//sh + 1, (W - kw)//sw + 1)``,
    as ``torch.nn.functional.max_pool2d``."""
    return _pool(x, size, stride, "max_pool2d").max(axis=(-2, -1))


def avg_pool2d(x: ArrayLike, size: IntOrPair = 2, stride: IntOrPair | None = None) -> np.ndarray:
    """Average pooling over the last two axes; shapes as :func:`max_pool2d`; float output."""
    return _pool(x, size, stride, "avg_pool2d").mean(axis=(-2, -1))


def flatten(x: ArrayLike) -> np.ndarray:
    """All values in one long vector, row by row (C order, as ``torch.flatten``): shape
    ``(x.size,)``."""
    return np.asarray(x).reshape(-1)


# --------------------------------------------------------------------------------------------
# The explainer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Term:
    """One input meeting one weight: ``product = weight * value``.

    ``input_index`` is in ``x``'s own coordinates; when ``padded`` is true it lies outside ``x``
    and ``value`` is the padding zero (in the lecture: an empty room).
    """

    weight_index: tuple[int, ...]
    weight: float
    input_index: tuple[int, ...]
    value: float
    product: float
    padded: bool


@dataclass(frozen=True)
class Step:
    """One output position: its terms, listed in kernel order ``w[0], w[1], ...``, and their sum.

    For ``op="convolution"`` the inputs therefore appear reversed (the flipped patient list).
    """

    op: str
    output_index: tuple[int, ...]
    terms: tuple[Term, ...]
    total: float
    kernel_shape: tuple[int, ...]


def _explain(x: np.ndarray, w: np.ndarray, geo: _Geometry, max_steps: int | None) -> list[Step]:
    ndim = x.ndim
    kernel = _kernel_as_used(w, geo.op)
    windows = _windows(x, geo)  # out_shape + kernel_shape
    products = windows * kernel  # broadcast over the output axes
    totals = products.reshape(geo.out_shape + (-1,)).sum(axis=-1)
    # Input index of tap j at output i, in x's coordinates: i*stride + j*dilation - pad_left.
    out_grid = np.indices(geo.out_shape).reshape(ndim, -1).T  # (M, ndim)
    tap_grid = np.indices(geo.kernel_shape).reshape(ndim, -1).T  # (K, ndim)
    stride = np.array(geo.stride)
    dilation = np.array(geo.dilation)
    left = np.array([pad[0] for pad in geo.pads])
    input_idx = out_grid[:, None, :] * stride + tap_grid[None, :, :] * dilation - left  # (M,K,nd)
    inside = np.all((input_idx >= 0) & (input_idx < np.array(x.shape)), axis=-1)  # (M, K)
    shape_k = np.array(geo.kernel_shape)
    # Tap j of the used kernel is weight w[j] (correlation) or w[K-1-j] (convolution).
    weight_idx = shape_k - 1 - tap_grid if geo.op == "convolution" else tap_grid  # (K, ndim)
    order = np.lexsort(weight_idx.T[::-1])  # list terms in kernel order w[0], w[1], ...
    window_values = windows.reshape(len(out_grid), -1)
    product_values = products.reshape(len(out_grid), -1)
    kernel_values = kernel.reshape(-1)
    chosen = pick_positions(totals, max_steps)
    count = len(chosen)
    steps = []
    for m in chosen:  # building records for display, not computing outputs
        terms = tuple(
            Term(
                weight_index=tuple(int(v) for v in weight_idx[j]),
                weight=kernel_values[j].item(),
                input_index=tuple(int(v) for v in input_idx[m, j]),
                value=window_values[m, j].item(),
                product=product_values[m, j].item(),
                padded=not bool(inside[m, j]),
            )
            for j in order
        )
        steps.append(
            Step(
                op=geo.op,
                output_index=tuple(int(v) for v in out_grid[m]),
                terms=terms,
                total=totals.reshape(-1)[m].item(),
                kernel_shape=geo.kernel_shape,
            )
        )
    if count < len(out_grid):
        logger.info("explain: showing %d of %d output positions", count, len(out_grid))
    return steps


def pick_positions(output: np.ndarray, count: int | None) -> np.ndarray:
    """Flat indices (in output order) of at most ``count`` output positions worth explaining.

    All of them when they fit (``count`` None or >= ``output.size``); otherwise the first
    position, the strongest and the weakest response (where the kernel matches best and
    worst), and the rest spread evenly over the output, so that a 427 x 640 photo is explained
    by a handful of telling positions instead of its first row.
    """
    total = int(np.asarray(output).size)
    if count is None or count >= total:
        return np.arange(total)
    if count < 1:
        return np.arange(0)
    flat = np.asarray(output, dtype=np.float64).reshape(-1)
    picked = [0, int(np.argmax(flat)), int(np.argmin(flat))][:count]
    for index in np.linspace(0, total - 1, count + 2).round().astype(int)[1:-1]:
        if len(set(picked)) >= count:
            break
        picked.append(int(index))
    spare = (i for i in range(total) if i not in picked)  # ties: fill up from the start
    unique = set(picked)
    while len(unique) < count:
        unique.add(next(spare))
    return np.array(sorted(unique))


def explain_convolution1d(
    x: ArrayLike,
    w: ArrayLike,
    *,
    op: str = "convolution",
    mode: str = "valid",
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    max_steps: int | None = None,
) -> list[Step]:
    """One :class:`Step` per output of :func:`convolve1d` (same options), in output order:
    which inputs meet which weights, the products and their sum (``step.total == y[i]``).
    ``max_steps`` keeps that many telling ones (:func:`pick_positions`; for long inputs)."""
    x_arr = _as_real_array(x, "x", 1)
    w_arr = _as_real_array(w, "w", 1)
    geo = _geometry(
        x_arr.shape,
        w_arr.shape,
        op=op,
        mode=mode,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return _explain(x_arr, w_arr, geo, max_steps)


def explain_convolution2d(
    image: ArrayLike,
    kernel: ArrayLike,
    *,
    op: str = "convolution",
    mode: str = "valid",
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    max_steps: int | None = None,
) -> list[Step]:
    """One :class:`Step` per output of :func:`convolve2d` (same options), row by row."""
    x_arr = _as_real_array(image, "image", 2)
    w_arr = _as_real_array(kernel, "kernel", 2)
    geo = _geometry(
        x_arr.shape,
        w_arr.shape,
        op=op,
        mode=mode,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    return _explain(x_arr, w_arr, geo, max_steps)


MAX_PRINTED_VALUES = 144  # arrays larger than 12 x 12 are summarised (shape, min, max, mean)
PAD_MARK = "."  # how a padding zero (an empty room) is shown in the tables


def _fmt_number(value: float) -> str:
    """Integral values without a decimal point (3, not 3.0); others with up to 4 decimals."""
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if math.isfinite(value) and float(value).is_integer():
        return str(int(value))
    text = np.format_float_positional(value, precision=4, trim="-")
    return "0" if text == "-0" else text  # -0.00001 rounds to 0, not "-0"


def format_array(array: ArrayLike) -> str:
    """An array the way the lecture writes it: ``[3 8 14 20 26 14 5]``, 2-D row by row."""
    arr = np.asarray(array)
    return np.array2string(
        arr, formatter={"float_kind": _fmt_number, "int": _fmt_number}, max_line_width=100
    )


def _cells(steps: list[Step], pick: str, row_sep: str = " / ") -> list[str]:
    """One cell per step: the picked term values in kernel order; 2-D rows joined by ``row_sep``."""
    cells = []
    for step in steps:
        if pick == "value":
            texts = [PAD_MARK if t.padded else _fmt_number(t.value) for t in step.terms]
        else:
            texts = [_fmt_number(getattr(t, pick)) for t in step.terms]
        if "\n" in row_sep and len(step.kernel_shape) == 2:  # a block: numbers in columns
            texts = [t.rjust(max(map(len, texts))) for t in texts]
        width = step.kernel_shape[-1]
        rows = [" ".join(texts[i : i + width]) for i in range(0, len(texts), width)]
        cells.append(row_sep.join(rows))
    return cells


def _caption(op: str, ndim: int, lecture_words: bool) -> str:
    if op == "convolution":
        if ndim == 1 and lecture_words:
            return (
                "Convolution: the patient list x is FLIPPED (the first patient on the right) and "
                "walks through the rooms w, one day at a time; each day, multiply each room's "
                "dose by the patients in it and add them up. Same numbers as reversing the "
                "kernel w and sliding it along x. (A CNN 'convolution' layer does not flip: "
                "it computes a correlation.)"
            )
        flipped = "reversed" if ndim == 1 else "rotated 180 degrees (flipped on both axes)"
        return (
            f"Convolution: the kernel w is {flipped} before it slides over x, so inputs are "
            "listed against w[0], w[1], ... in reverse order. (A CNN 'convolution' layer does "
            "not flip: it computes a correlation.)"
        )
    what = "list" if ndim == 1 else "filter"
    return (
        f"Correlation: the {what} w slides over x WITHOUT flipping; multiply element-wise and "
        "sum. This is what a CNN 'convolution' layer computes (torch.nn.functional."
        f"conv{ndim}d)."
    )


def _headers(op: str, ndim: int, lecture_words: bool) -> list[str]:
    if not lecture_words:
        return ["y index", "x values", "w values", "products", "sum y"]
    if ndim == 1 and op == "convolution":
        return [
            "day t",
            "rooms: doses w",
            "patients in rooms (x flipped)",
            "dose x patients",
            "usage y[t]",
        ]
    if ndim == 1:
        return ["position", "window of x", "w", "element-wise products", "sum y"]
    patch = "image patch (rotated)" if op == "convolution" else "image patch"
    return ["feature map\n(row, col)", patch, "filter w", "patch x filter", "sum"]


def _table_parts(
    steps: list[Step], lecture_words: bool, row_sep: str = " / "
) -> tuple[str, list[str], list[list[str]], str]:
    """(caption, headers, rows, legend) shared by the text and rich renderers; ``row_sep`` joins
    the kernel rows of a 2-D cell (a newline in the rich table: the patch drawn as a block)."""
    first = steps[0]
    ndim = len(first.output_index)
    index = [
        str(s.output_index[0]) if ndim == 1 else ", ".join(map(str, s.output_index)) for s in steps
    ]
    columns = [
        index,
        _cells(steps, "value", row_sep),
        _cells(steps, "weight", row_sep),
        _cells(steps, "product", row_sep),
        [_fmt_number(s.total) for s in steps],
    ]
    if lecture_words and ndim == 1 and first.op == "convolution":
        # The lecture's table: the rooms (doses w) stay put, the flipped patient list moves.
        columns[1], columns[2] = columns[2], columns[1]
    rows = [list(row) for row in zip(*columns, strict=True)]
    notes = []
    if any(t.padded for s in steps for t in s.terms):
        room = lecture_words and ndim == 1 and first.op == "convolution"
        notes.append(
            f"'{PAD_MARK}' = zero padding"
            + (" (an empty room: nobody there that day)" if room else "")
        )
    if ndim == 2 and row_sep.strip():
        notes.append(f"2-D cells list the kernel's rows separated by '{row_sep.strip()}'")
    legend = "; ".join(notes)
    return (
        _caption(first.op, ndim, lecture_words),
        _headers(first.op, ndim, lecture_words),
        rows,
        legend,
    )


def format_steps(steps: list[Step], lecture_words: bool = True, max_rows: int | None = None) -> str:
    """A plain-text table of the steps: caption, one row per output position, legend.

    ``lecture_words`` names the columns as the lecture does (days, rooms, patients, usage for
    1-D convolution); otherwise generic (y index, x values, w values, products, sum).
    ``max_rows`` keeps the first rows and says how many were left out.
    """
    if not steps:
        return "(no output positions)"
    caption, headers, rows, legend = _table_parts(steps, lecture_words)
    left_out = 0
    if max_rows is not None and len(rows) > max_rows:
        left_out, rows = len(rows) - max_rows, rows[:max_rows]
    widths = [max(len(h), *(len(r[c]) for r in rows)) for c, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = (cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        return " | ".join(padded).rstrip()

    out = [textwrap.fill(caption, width=100), "", line(headers)]
    out += ["-+-".join("-" * w for w in widths)] + [line(row) for row in rows]
    if left_out:
        out.append(f"... ({left_out} more rows)")
    if legend:
        out += ["", legend]
    return "\n".join(out)


def steps_table(steps: list[Step], lecture_words: bool = True) -> Table:
    """The same table as :func:`format_steps`, as a ``rich.table.Table`` for the CLI."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    if not steps:
        return Table(title="(no output positions)")
    caption, headers, rows, legend = _table_parts(steps, lecture_words, row_sep="\n")
    # escape: "y[t]" and "w[0]" would otherwise be read as rich markup tags
    table = Table(
        title=escape(caption),
        caption=escape(legend),
        title_justify="left",
        box=box.SIMPLE_HEAD,  # fewer rule characters: a 3 x 3 patch of floats fits 80 columns
        pad_edge=False,
        collapse_padding=True,
    )
    for number, header in enumerate(headers):
        # the numbers never wrap (a wrapped patch row reads as two rows); the headers may
        widest = max(len(line) for row in rows for line in row[number].split("\n"))
        table.add_column(escape(header), justify="right", min_width=widest)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    return table


# --------------------------------------------------------------------------------------------
# Input from the command line and from image files
# --------------------------------------------------------------------------------------------

_INT64 = np.iinfo(np.int64)


def _parse_row(row: str, number: int, text: str) -> list[int | float]:
    tokens = [tok for tok in re.split(r"[\s,]+", row.strip()) if tok]
    if not tokens:
        raise ConfigError(f"row {number} of {text!r} is empty; write numbers like '1 0 1; 0 1 0'")
    values: list[int | float] = []
    for tok in tokens:
        value: int | float
        try:
            value = int(tok)
        except ValueError:
            try:
                value = float(tok)
            except ValueError:
                raise ConfigError(
                    f"cannot read {tok!r} (row {number} of {text!r}) as a number; "
                    "write numbers separated by spaces or commas, rows by ';'"
                ) from None
        if not math.isfinite(value):
            raise ConfigError(f"{tok!r} (row {number} of {text!r}) is not a finite number")
        values.append(value)
    return values


def parse_array(text: str) -> np.ndarray:
    """Numbers from command-line text: a 1-D list or 2-D rows.

    Accepted: ``"3 2 1"``, ``"[3 2 1]"``, ``"3,2,1"`` (1-D) and ``"1 1 1; 0 1 1"``,
    ``"[1 1 1; 0 1 1]"``, ``"[[1 0 1] [0 1 0] [1 0 1]]"``, ``"[[1,0],[0,1]]"`` (2-D; one row
    in double brackets stays 2-D). All whole numbers give an int64 array (like ``np.array``),
    otherwise float64. Raises ``ConfigError`` naming the offending text for non-numbers,
    empty or ragged rows and unbalanced brackets.
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected text like '3 2 1', got {type(text).__name__}")
    source = text.strip()
    if not source:
        raise ConfigError("empty array text; write numbers like '3 2 1' or '1 0; 0 1'")
    depth, max_depth = 0, 0
    for char in source:
        depth += (char == "[") - (char == "]")
        max_depth = max(max_depth, depth)
        if depth < 0:
            break
    if depth != 0 or max_depth > 2:
        raise ConfigError(
            f"unbalanced or too deeply nested brackets in {text!r}; use '[3 2 1]' (1-D) or "
            "'[[1 0] [0 1]]' (2-D)"
        )
    if max_depth and not (source.startswith("[") and source.endswith("]")):
        raise ConfigError(f"unexpected text outside the brackets in {text!r}")
    body = source[1:-1] if max_depth else source
    if max_depth == 2:
        rows = re.findall(r"\[([^\[\]]*)\]", body)
        between = re.sub(r"\[[^\[\]]*\]", "", body)
        if between.strip(" \t\n,;"):
            raise ConfigError(
                f"unexpected {between.strip()!r} between the rows of {text!r}; "
                "write rows as [..] [..]"
            )
    else:
        rows = body.split(";")
    parsed = [_parse_row(row, i + 1, text) for i, row in enumerate(rows)]
    lengths = [len(row) for row in parsed]
    if len(set(lengths)) > 1:
        bad = next(i for i, n in enumerate(lengths) if n != lengths[0])
        raise ConfigError(
            f"ragged rows in {text!r}: row 1 has {lengths[0]} numbers but row {bad + 1} "
            f"({rows[bad].strip()!r}) has {lengths[bad]}; every row needs the same count"
        )
    flat = [v for row in parsed for v in row]
    all_int = all(isinstance(v, int) and _INT64.min <= v <= _INT64.max for v in flat)
    array = np.array(parsed, dtype=np.int64 if all_int else np.float64)
    return array if (len(parsed) > 1 or max_depth == 2) else array[0]


def load_array_image(path: str | Path, size: IntOrPair | None = None) -> np.ndarray:
    """A grayscale image file as a float64 array (H, W) with values in [0, 1].

    Decoded by ``cnnlab.data.decode.load_image(path, mode="L")``, the one decoding policy
    (EXIF orientation applied, allow-listed formats, pixel limit). ``size``: an int (square) or
    (height, width) to resize to, bilinear. Raises ``DataError(path, reason)`` for a missing or
    unreadable file.
    """
    from PIL import Image

    from cnnlab.data.decode import load_image  # imported here: the lab itself needs no Pillow

    image = load_image(path, mode="L")
    if size is not None:
        height, width = _as_ints(size, "size", 2, 1)
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float64) / 255.0


# --------------------------------------------------------------------------------------------
# The lecture's worked examples and the one function the CLI calls
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LectureExample:
    """A worked example from the lecture: inputs, options and the lecture's expected output."""

    name: str
    title: str
    x: tuple
    w: tuple
    options: dict[str, Any]
    expected: tuple
    source: str  # where the numbers are in the lecture (and what we added to them)


LECTURE_EXAMPLES: list[LectureExample] = [
    LectureExample(
        name="hospital-one-day",
        title="Plan [3] for the patients [1 2 3 4 5]: everyday multiplication",
        x=(1, 2, 3, 4, 5),
        w=(3,),
        options={"op": "convolution", "mode": "full"},
        expected=(3, 6, 9, 12, 15),
        source="Part 1, Hospital Analogy: '[3] * [1 2 3 4 5] = [3 6 9 12 15]'",
    ),
    LectureExample(
        name="hospital",
        title="Plan [3 2 1] for the patients [1 2 3 4 5]: the flipped list walks through the rooms",
        x=(1, 2, 3, 4, 5),
        w=(3, 2, 1),
        options={"op": "convolution", "mode": "full"},
        expected=(3, 8, 14, 20, 26, 14, 5),
        source="Intuition For Convolution: '[3 2 1] * [1 2 3 4 5] = [3 8 14 20 26 14 5]'",
    ),
    LectureExample(
        name="slide",
        title="Sliding b = [1 2 3] along a = [5 3 2 5 9 7] without flipping",
        x=(5, 3, 2, 5, 9, 7),
        w=(1, 2, 3),
        options={"op": "correlation", "mode": "valid"},
        expected=(17, 22, 39, 44),
        source=(
            "What is CNN? contd: 'a * b = [17, 22]' with products [5, 6, 6] and [3, 4, 15]; "
            "the slide stops after two windows, 39 = 2+10+27 and 44 = 5+18+21 finish it"
        ),
    ),
    LectureExample(
        name="image",
        title="The 5x5 binary image and the 3x3 filter: the convolution layer's feature map",
        x=(
            (1, 1, 1, 0, 0),
            (0, 1, 1, 1, 0),
            (0, 0, 1, 1, 1),
            (0, 0, 1, 1, 0),
            (0, 1, 1, 0, 0),
        ),
        w=((1, 0, 1), (0, 1, 0), (1, 0, 1)),
        options={"op": "correlation", "mode": "valid"},
        expected=((4, 3, 4), (2, 4, 3), (2, 3, 4)),
        source=(
            "1. Convolution Layer: 'Image pixels' and 'Filter'; the feature map is the slide's "
            "figure (the filter is symmetric, so convolution gives the same map)"
        ),
    ),
]


@dataclass(frozen=True, eq=False)
class LabResult:
    """What ``cnnlab conv`` shows: the inputs, the options, the output and (optionally) steps."""

    x: np.ndarray
    w: np.ndarray
    output: np.ndarray
    op: str
    mode: str
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]  # zeros actually added (left, right) per axis
    steps: list[Step] | None = None
    steps_total: int = 0  # output positions (steps may hold fewer when max_steps cut it)
    title: str | None = None
    notes: list[str] = field(default_factory=list)
    source: str | None = None  # the image file x was read from, if any

    def options(self) -> str:
        """One line: op and options, e.g. 'convolution, mode=full, stride=1, ...'."""

        def one(values: tuple[int, ...]) -> str:
            return str(values[0]) if len(set(values)) == 1 else ",".join(map(str, values))

        return (
            f"{self.op}, mode={self.mode}, stride={one(self.stride)}, "
            f"padding={one(self.padding)}, dilation={one(self.dilation)}"
        )

    def summary(self) -> str:
        """Plain text without the steps: title, options, x, w, y (with its shape), notes."""

        def block(name: str, arr: np.ndarray) -> str:
            if arr.size > MAX_PRINTED_VALUES:  # an image: its numbers would fill the screen
                return (
                    f"{name}: {' x '.join(map(str, arr.shape))} values, min {_fmt_number(arr.min())}"
                    f", max {_fmt_number(arr.max())}, mean {_fmt_number(arr.mean())}"
                )
            text = format_array(arr)
            return f"{name} = " + text.replace("\n", "\n" + " " * (len(name) + 3))

        lines = [self.title] if self.title else []
        if self.source:
            lines.append(f"x is the image {self.source} in grayscale, values in [0, 1]")
        lines += [
            self.options(),
            block("x", self.x),
            block("w", self.w),
            block("y", self.output) + f"   shape {tuple(self.output.shape)}",
        ]
        return "\n".join(lines + self.notes)

    def left_out(self) -> str | None:
        """One line saying how many positions the steps leave out, or None when they are all there."""
        if self.steps is None or len(self.steps) >= self.steps_total:
            return None
        return (
            f"explained {len(self.steps)} of {self.steps_total:,} output positions (the first, "
            f"the strongest and the weakest response, the rest spread evenly); "
            f"{self.steps_total - len(self.steps):,} left out"
        )

    def format(self, lecture_words: bool = True, max_rows: int | None = None) -> str:
        """Plain text: :meth:`summary` and, when explained, the steps table."""
        lines = [self.summary()]
        if self.steps is not None:
            lines += ["", format_steps(self.steps, lecture_words, max_rows)]
            if self.left_out():
                lines.append(f"({self.left_out()})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: options, arrays as nested lists, steps (when explained) as dicts."""
        steps = None
        if self.steps is not None:
            steps = [
                {
                    "output_index": list(step.output_index),
                    "total": step.total,
                    "terms": [
                        {
                            "weight_index": list(t.weight_index),
                            "weight": t.weight,
                            "input_index": list(t.input_index),
                            "value": t.value,
                            "product": t.product,
                            "padded": t.padded,
                        }
                        for t in step.terms
                    ],
                }
                for step in self.steps
            ]
        return {
            "op": self.op,
            "mode": self.mode,
            "stride": list(self.stride),
            "padding": list(self.padding),
            "dilation": list(self.dilation),
            "pads": [list(pair) for pair in self.pads],
            "x": self.x.tolist(),
            "w": self.w.tolist(),
            "output": self.output.tolist(),
            "shape": list(self.output.shape),
            "steps_total": self.steps_total,
            "steps": steps,
            "title": self.title,
            "notes": list(self.notes),
            "source": self.source,
        }


EXPLAIN_ALL_UP_TO = 25  # output positions explained in full (a 5 x 5 feature map is still read)
EXPLAIN_HANDFUL = 6  # positions explained of a larger output: a table that fits on one screen

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif")


def _looks_like_image_path(text: str) -> bool:
    """``--x photo.png``: numbers never end in an image suffix, and a path to a file is a file."""
    candidate = text.strip()
    return candidate.lower().endswith(_IMAGE_SUFFIXES) or Path(candidate).is_file()


def run_lab(
    x: ArrayLike | None = None,
    w: ArrayLike | None = None,
    *,
    op: str = "convolution",
    mode: str = "valid",
    stride: IntOrPair = 1,
    padding: IntOrPair = 0,
    dilation: IntOrPair = 1,
    explain: bool = False,
    image: str | Path | None = None,
    image_size: IntOrPair | None = None,
    max_steps: int | str | None = "auto",
) -> LabResult:
    """Everything ``cnnlab conv`` does, so the CLI only passes its flags through.

    ``x`` / ``w``: arrays or command-line text (:func:`parse_array`); both 1-D or both 2-D.
    ``image`` (or ``x`` text that ends in an image suffix such as ".png" or names a file): a
    picture used as the 2-D ``x`` (grayscale, [0, 1], :func:`load_array_image`, resized to
    ``image_size`` if given). ``stride`` / ``padding`` /
    ``dilation``: int, pair or text "2" / "2,1". ``explain`` adds the step table (at most
    ``max_steps`` output positions chosen by :func:`pick_positions`; ``None`` for all;
    ``"auto"``: all of up to :data:`EXPLAIN_ALL_UP_TO`, else :data:`EXPLAIN_HANDFUL`).
    """
    if w is None:
        raise ConfigError("no kernel: give w (for example --w '3 2 1')")
    if image is None and (
        isinstance(x, Path) or (isinstance(x, str) and _looks_like_image_path(x))
    ):
        x, image = None, x
    if image is not None:
        if x is not None:
            raise ConfigError("give either x or an image file, not both")
        x_arr = load_array_image(image, size=image_size)
    elif x is None:
        raise ConfigError("no input: give x (for example --x '1 2 3 4 5') or an image file")
    else:
        x_arr = parse_array(x) if isinstance(x, str) else np.asarray(x)
    w_arr = parse_array(w) if isinstance(w, str) else np.asarray(w)
    if x_arr.ndim != w_arr.ndim or x_arr.ndim not in (1, 2):
        raise ConfigError(
            f"x has shape {x_arr.shape} and w has shape {w_arr.shape}: give both 1-D "
            "('1 2 3') or both 2-D ('1 0; 0 1')"
        )
    ndim = x_arr.ndim
    x_arr = _as_real_array(x_arr, "x", ndim)
    w_arr = _as_real_array(w_arr, "w", ndim)
    geo = _geometry(
        x_arr.shape,
        w_arr.shape,
        op=op,
        mode=mode,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )
    output = _convolve(x_arr, w_arr, geo)
    if max_steps == "auto":
        few = math.prod(geo.out_shape) <= EXPLAIN_ALL_UP_TO
        max_steps = None if few else EXPLAIN_HANDFUL
    elif isinstance(max_steps, str):
        raise ConfigError(f"max_steps={max_steps!r}: expected a whole number, None or 'auto'")
    steps = _explain(x_arr, w_arr, geo, max_steps) if explain else None
    logger.debug("conv lab: %s x%s w%s -> y%s", op, x_arr.shape, w_arr.shape, output.shape)
    return LabResult(
        x=x_arr,
        w=w_arr,
        output=output,
        op=geo.op,
        mode=geo.mode,
        stride=geo.stride,
        padding=geo.padding,
        dilation=geo.dilation,
        pads=geo.pads,
        steps=steps,
        steps_total=math.prod(geo.out_shape),
        source=None if image is None else str(image),
    )


def run_example(name: str, explain: bool = True) -> LabResult:
    """Run one of :data:`LECTURE_EXAMPLES` by name; the result notes the lecture's answer."""
    names = [ex.name for ex in LECTURE_EXAMPLES]
    _check_choice(name, "lecture example", names)
    example = LECTURE_EXAMPLES[names.index(name)]
    result = run_lab(example.x, example.w, explain=explain, max_steps=None, **example.options)
    expected = np.array(example.expected)
    agrees = result.output.shape == expected.shape and bool(np.all(result.output == expected))
    shown = format_array(expected).replace("\n", "\n" + " " * len("lecture: "))
    note = f"lecture: {shown} ({'agrees' if agrees else 'DIFFERS'})"
    return LabResult(**{**result.__dict__, "title": example.title, "notes": [note]})
