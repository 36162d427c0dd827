"""Boxes with legible labels: one colour per class, labels inside the picture, never on top of
each other. NumPy + Pillow only (drawing for reports; no torch).

:func:`place_labels` is the placement rule (pure, tested on crowded cases); :func:`draw_boxes`
draws boxes and their labels on an enlarged copy of an image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["draw_boxes", "enlarge", "place_labels"]

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def _overlap(a: Rect, b: Rect) -> float:
    """Area shared by two rectangles (0 when they only touch)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(w, 0.0) * max(h, 0.0)


def place_labels(
    boxes: Sequence[Sequence[float]],
    sizes: Sequence[tuple[float, float]],
    bounds: tuple[float, float],
) -> list[tuple[float, float]]:
    """Top-left corners for label rectangles ``sizes[i] = (width, height)`` beside
    ``boxes[i] = (x0, y0, x1, y1)``, inside ``bounds = (width, height)`` and not overlapping.

    Each label tries, in order: just above its box, inside its top edge, just below, inside its
    bottom edge (left-aligned, then right-aligned), each moved inside the picture; the first
    spot free of the labels placed so far wins. When all are taken, the nearest free spot in the
    label's column (then anywhere, row by row) is used; a picture too crowded for that gets the
    spot overlapping least. A label wider or taller than the picture is placed at its edge.
    """
    width, height = bounds
    placed: list[Rect] = []
    corners: list[tuple[float, float]] = []
    for (x0, y0, x1, y1), (w, h) in zip(boxes, sizes, strict=True):

        def inside(x: float, y: float, w: float = w, h: float = h) -> tuple[float, float]:
            return min(max(x, 0.0), max(width - w, 0.0)), min(max(y, 0.0), max(height - h, 0.0))

        tries = [inside(x, y) for x in (x0, x1 - w) for y in (y0 - h, y0, y1, y1 - h)]
        step = max(h / 2, 1.0)
        column = sorted(
            (inside(x0, y0 - h + k * step * sign) for k in range(1, int(height / step) + 2)
             for sign in (1, -1)),
            key=lambda p: abs(p[1] - (y0 - h)),
        )  # fmt: skip
        grid = [
            inside(x, y)
            for y in np.arange(0.0, max(height - h, 0.0) + 1, step)
            for x in np.arange(0.0, max(width - w, 0.0) + 1, max(w / 4, 1.0))
        ]

        def cost(p: tuple[float, float], w: float = w, h: float = h) -> float:
            return sum(_overlap((p[0], p[1], p[0] + w, p[1] + h), r) for r in placed)

        spot = next((p for p in [*tries, *column, *grid] if cost(p) == 0), None)
        if spot is None:
            spot = min(tries + column + grid, key=cost)
        corners.append(spot)
        placed.append((spot[0], spot[1], spot[0] + w, spot[1] + h))
    return corners


def enlarge(image_hwc: np.ndarray, at_least: int = 320) -> tuple[np.ndarray, int]:
    """Nearest-neighbour enlargement by a whole factor to at least ``at_least`` pixels on the
    longer side; returns (image, factor)."""
    factor = max(1, -(-at_least // max(image_hwc.shape[:2])))
    return image_hwc.repeat(factor, 0).repeat(factor, 1), factor


def _text_colour(rgb: Sequence[int]) -> str:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return "black" if luminance > 150 else "white"


def draw_boxes(
    image_hwc: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    colours: Sequence[Sequence[int]],
    *,
    line: int = 2,
    font_size: int = 13,
) -> np.ndarray:
    """(H, W, 3) uint8 with ``boxes`` (N, 4) in its own pixels drawn in ``colours[i]`` and each
    ``labels[i]`` on a patch of the same colour placed by :func:`place_labels`."""
    im = Image.fromarray(np.ascontiguousarray(image_hwc))
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=font_size)
    rects = [tuple(float(v) for v in b) for b in np.asarray(boxes, dtype=float).reshape(-1, 4)]
    for rect, colour in zip(rects, colours, strict=True):
        draw.rectangle(rect, outline=tuple(int(c) for c in colour), width=line)
    pad = 2
    sizes = []
    for text in labels:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        sizes.append((right - left + 2 * pad, bottom - top + 2 * pad))
    corners = place_labels(rects, sizes, (im.width, im.height))
    for text, colour, (x, y), (w, h) in zip(labels, colours, corners, sizes, strict=True):
        fill = tuple(int(c) for c in colour)
        draw.rectangle((x, y, x + w - 1, y + h - 1), fill=fill)
        left, top, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((x + pad - left, y + pad - top), text, fill=_text_colour(fill), font=font)
    return np.asarray(im)
