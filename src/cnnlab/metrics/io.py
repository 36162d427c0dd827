"""Reading a predictions CSV (what ``cnnlab metrics PREDICTIONS.csv`` and ``cnnlab compare`` read).

Format
------
UTF-8 text (a byte-order mark is allowed), comma- or semicolon-separated (sniffed from the
header; with ``;`` a decimal comma such as ``0,75`` is accepted), one header row, one row per
sample. Column names are matched case-insensitively after stripping spaces; cells are stripped.

* the true label: one column named ``label``, ``target`` or ``y_true``; a class name or an
  integer class index;
* then either per-class scores: one column per class named ``score_<class>`` or ``prob_<class>``
  (one prefix for all); the class names and their order come from these columns.
  ``prob_`` columns must be probabilities (each row in [0, 1] and summing to 1 +- 1e-3);
  ``score_`` columns may also be logits: if they are not probabilities they are
  softmax-normalised (logged);
* or predicted labels: a column ``pred``, ``prediction`` or ``y_pred`` (class names or indices).
  Without score columns the classes are the sorted union of the labels and predictions
  (integer labels 0..max, when every label is an integer).

Both may be present (then both are returned). Example::

    label,score_cat,score_dog
    cat,0.9,0.1
    dog,0.3,0.7

Multi-label (several labels per sample; :func:`read_multilabel_predictions_csv`): a ``labels``
column holds each sample's true labels separated by ``;`` (empty: no label), and there is one
``score_<label>`` / ``prob_<label>`` column per label (the label names and order). A score is
a decision at ``score >= threshold`` (0.5 unless told); ``score_`` columns outside [0, 1] are
read as logits and passed through the sigmoid (logged). An optional ``pred_labels`` column
(``;``-separated) gives the decisions instead. Example::

    labels,score_cat,score_dog
    cat;dog,0.9,0.6
    ,0.2,0.1

Errors (``cnnlab.errors.DataError`` naming the file, the row -- the file's line number, the
header being row 1 -- and how to fix it): missing file, empty file / no data rows, missing
columns (listing the accepted names), wrong number of fields, empty or unknown label (with the
closest class name), non-numeric, NaN or infinite score, ``prob_`` rows that are not
probabilities.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError, close_matches, wrong_field_count
from cnnlab.metrics.scores import PROB_SUM_TOL, softmax

logger = logging.getLogger(__name__)

__all__ = [
    "read_predictions_csv",
    "read_multilabel_predictions_csv",
    "is_multilabel_csv",
    "LABEL_COLUMNS",
    "PRED_COLUMNS",
    "SCORE_PREFIXES",
]

LABEL_COLUMNS = ("label", "target", "y_true")
MULTILABEL_COLUMN = "labels"  # a multi-label CSV's true labels, ';'-separated
MULTILABEL_PRED_COLUMN = "pred_labels"  # its optional decisions, ';'-separated
PRED_COLUMNS = ("pred", "prediction", "y_pred")
SCORE_PREFIXES = ("score_", "prob_")
_FORMAT_HINT = (
    "expected a header with a label column (label, target or y_true) and either score_<class> / "
    "prob_<class> columns or a prediction column (pred, prediction or y_pred), "
    "e.g. 'label,score_cat,score_dog'"
)


def _check_rows(
    path: Path, header: list[str], rows: list[tuple[int, list[str]]], delimiter: str
) -> None:
    """At least one data row, and every row as many fields as the header (a DataError naming the row)."""
    if not rows:
        raise DataError(path, "no data rows after the header; add one row per sample")
    for line, fields in rows:
        if len(fields) != len(header):
            raise wrong_field_count(path, len(fields), len(header), row=line, delimiter=delimiter)


def _find(header: list[str], choices: tuple[str, ...], path: Path, what: str) -> int | None:
    found = [i for i, h in enumerate(header) if h.lower() in choices]
    if len(found) > 1:
        raise DataError(
            path, f"more than one {what} column: {', '.join(header[i] for i in found)}; keep one"
        )
    return found[0] if found else None


def _delimiter(first_line: str) -> str:
    # The header holds no numbers, so it tells the delimiter without ambiguity (a semicolon file
    # may use decimal commas in its rows, which would fool a sniffer reading the data).
    try:
        return csv.Sniffer().sniff(first_line, delimiters=",;").delimiter
    except csv.Error:
        return ";" if first_line.count(";") > first_line.count(",") else ","


def _parse_scores(
    rows: list[tuple[int, list[str]]],
    cols: list[int],
    header: list[str],
    decimal_comma: bool,
    path: Path,
) -> np.ndarray:
    """``(N, len(cols))`` float64 scores; DataError at the first (by row) bad cell."""
    probs = np.empty((len(rows), len(cols)), dtype=np.float64)
    first_bad: tuple[int, str] | None = None
    for j, i in enumerate(cols):
        cells = [fields[i] for _, fields in rows]
        if decimal_comma:
            cells = [c.replace(",", ".") for c in cells]
        try:
            column = np.array(cells, dtype=np.float64)  # C loop; the slow scan only on errors
        except ValueError:
            column = None
        if column is not None and np.isfinite(column).all():
            probs[:, j] = column
            continue
        for r, cell in enumerate(cells):
            try:
                value = float(cell)
            except ValueError:
                reason = f"non-numeric score {rows[r][1][i]!r} in column {header[i]}"
            else:
                if math.isfinite(value):
                    continue
                reason = f"score {rows[r][1][i]!r} in column {header[i]} is not finite"
            if first_bad is None or r < first_bad[0]:
                first_bad = (r, reason)
            break
    if first_bad is not None:
        r, reason = first_bad
        raise DataError(path, f"{reason}; every score must be a finite number", row=rows[r][0])
    return probs


def _resolve(
    value: str, names: list[str], index: dict[str, int], path: Path, row: int, column: str
) -> int:
    if value == "":
        raise DataError(
            path, f"empty {column}; every row needs one of the classes {names}", row=row
        )
    if value in index:
        return index[value]
    if value.lstrip("-").isdigit():
        k = int(value)
        if 0 <= k < len(names):
            return k
    raise DataError(
        path,
        f"unknown {column} {value!r}{close_matches(value, names)}; known classes (from the "
        f"header) are {names}, or an integer index 0..{len(names) - 1}",
        row=row,
    )


def _check_one_spelling(cells: list[tuple[int, str]], index: dict[str, int], path: Path) -> None:
    """Bad-inputs case 35: a column that names classes in some rows and gives their index in
    others (``cat`` and ``1``) was read silently, ``1`` as whichever class the header lists
    second: refused, naming a row of each. (The label and prediction columns may each use its
    own way.)"""
    named = next(((line, v) for line, v in cells if v in index), None)
    numbered = next(
        ((line, v) for line, v in cells if v not in index and v.lstrip("-").isdigit()), None
    )
    if named and numbered:
        raise DataError(
            path,
            f"classes given by name (row {named[0]}: {named[1]!r}) and by index (row "
            f"{numbered[0]}: {numbered[1]!r}) in one column; write every row's one way",
            row=numbered[0],
        )


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], str]:
    """(header, [(line number, cells)], delimiter) of a predictions CSV; blank lines skipped."""
    if not path.is_file():
        raise DataError(
            path,
            "predictions file not found; check the path"
            if not path.exists()
            else "not a file; give the path of a .csv file",
        )
    try:
        text = path.read_text(encoding="utf-8-sig")  # utf-8-sig drops a byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(
            path, f"not UTF-8 text ({e.reason} at byte {e.start}); save the CSV as UTF-8"
        ) from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise DataError(path, f"empty file; {_FORMAT_HINT}")
    delimiter = _delimiter(first)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for fields in reader:
        if not any(f.strip() for f in fields):
            continue  # blank line
        if header is None:
            header = [f.strip() for f in fields]
            header_line = reader.line_num
            continue
        rows.append((reader.line_num, [f.strip() for f in fields]))
    assert header is not None
    if header_line != 1:
        logger.info("%s: header found on line %d after blank lines", path, header_line)

    return header, rows, delimiter


def read_predictions_csv(
    path: str | Path,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """Read a predictions CSV (format in the module docstring).

    Returns ``(targets, probs, preds, class_names)``: ``targets (N,)`` int64 indices into
    ``class_names``; ``probs (N, K)`` float64 probabilities or None; ``preds (N,)`` int64 or None.
    Pass them on as ``classification_metrics(targets, probs, preds=preds,
    class_names=class_names)``.
    """
    path = Path(path)
    header, rows, delimiter = _read_rows(path)
    label_col = _find(header, LABEL_COLUMNS, path, "label")
    pred_col = _find(header, PRED_COLUMNS, path, "prediction")
    score_cols: dict[str, list[int]] = {p: [] for p in SCORE_PREFIXES}
    for i, h in enumerate(header):
        for prefix in SCORE_PREFIXES:
            if h.lower().startswith(prefix) and len(h) > len(prefix):
                score_cols[prefix].append(i)
    if label_col is None:
        raise DataError(path, f"no label column in header {header}; {_FORMAT_HINT}")
    if score_cols["score_"] and score_cols["prob_"]:
        raise DataError(path, "both score_<class> and prob_<class> columns; use one prefix")
    prefix = "score_" if score_cols["score_"] else "prob_"
    cols = score_cols[prefix]
    if not cols and pred_col is None:
        raise DataError(path, f"no score or prediction columns in header {header}; {_FORMAT_HINT}")
    _check_rows(path, header, rows, delimiter)

    labels = [fields[label_col] for _, fields in rows]
    pred_values = None if pred_col is None else [fields[pred_col] for _, fields in rows]

    if cols:
        names = [header[i][len(prefix) :] for i in cols]
        if len(set(names)) != len(names):
            raise DataError(path, f"repeated class in the {prefix}<class> columns: {names}")
        probs = _parse_scores(rows, cols, header, delimiter == ";", path)
    else:
        probs = None
        values = labels + (pred_values or [])
        if all(v.lstrip("-").isdigit() for v in values if v):
            top = max((int(v) for v in values if v), default=0)
            names = [str(k) for k in range(top + 1)]
        else:
            names = sorted({v for v in values if v})
    index = {n: k for k, n in enumerate(names)}
    for column in (labels, pred_values or []):  # no prediction column: nothing to check
        cells = [(line, v) for v, (line, _) in zip(column, rows, strict=False)]
        _check_one_spelling(cells, index, path)

    targets = np.array(
        [
            _resolve(v, names, index, path, line, "label")
            for v, (line, _) in zip(labels, rows, strict=True)
        ],
        dtype=np.int64,
    )
    preds = None
    if pred_values is not None:
        preds = np.array(
            [
                _resolve(v, names, index, path, line, "prediction")
                for v, (line, _) in zip(pred_values, rows, strict=True)
            ],
            dtype=np.int64,
        )

    if probs is not None:
        probs = _normalise(probs, prefix, path, [line for line, _ in rows])
    return targets, probs, preds, names


def _normalise(probs: np.ndarray, prefix: str, path: Path, lines: list[int]) -> np.ndarray:
    bad_range = ((probs < 0) | (probs > 1)).any(axis=1)
    bad_sum = np.abs(probs.sum(axis=1) - 1) > PROB_SUM_TOL
    bad = bad_range | bad_sum
    if not bad.any():
        return probs
    if prefix == "prob_":
        r = int(np.flatnonzero(bad)[0])
        raise DataError(
            path,
            f"prob_ columns must be probabilities, but this row sums to {probs[r].sum():.6g}"
            f"{' and has a value outside [0, 1]' if bad_range[r] else ''}; name the columns "
            "score_<class> for logits or unnormalised scores",
            row=lines[r],
        )
    logger.warning(
        "%s: score_ columns are not probabilities (e.g. row %d); applying softmax",
        path,
        lines[int(np.flatnonzero(bad)[0])],
    )
    return softmax(probs)


def is_multilabel_csv(path: str | Path) -> bool:
    """Whether a predictions CSV is the multi-label form (a ``labels`` column, no ``label``)."""
    header, _, _ = _read_rows(Path(path))
    names = [h.lower() for h in header]
    return MULTILABEL_COLUMN in names and not any(c in names for c in LABEL_COLUMNS)


def _label_sets(
    cells: list[tuple[int, str]], names: list[str], path: Path, column: str
) -> np.ndarray:
    """(N, L) int64 0/1 from ';'-separated label cells; an unknown label is a DataError naming
    the row and the closest label."""
    index = {n: j for j, n in enumerate(names)}
    out = np.zeros((len(cells), len(names)), dtype=np.int64)
    for r, (line, cell) in enumerate(cells):
        for name in (x.strip() for x in cell.split(";")):
            if not name:
                continue
            if name not in index:
                raise DataError(
                    path,
                    f"unknown label {name!r} in column {column}{close_matches(name, names)}; "
                    f"the labels (from the score columns) are {names}",
                    row=line,
                )
            out[r, index[name]] = 1
    return out


def read_multilabel_predictions_csv(
    path: str | Path,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, list[str]]:
    """Read a multi-label predictions CSV (format in the module docstring).

    Returns ``(targets (N, L) 0/1, probs (N, L) float64 in [0, 1] or None, preds (N, L) 0/1 or
    None, label_names)``; pass them on as ``multilabel_metrics(targets, probs, preds=preds,
    label_names=label_names)``."""
    path = Path(path)
    header, rows, delimiter = _read_rows(path)
    lower = [h.lower() for h in header]
    if MULTILABEL_COLUMN not in lower:
        raise DataError(
            path, f"no labels column in header {header}; e.g. 'labels,score_cat,score_dog'"
        )
    label_col = lower.index(MULTILABEL_COLUMN)
    pred_col = lower.index(MULTILABEL_PRED_COLUMN) if MULTILABEL_PRED_COLUMN in lower else None
    prefixes = [
        p for p in SCORE_PREFIXES if any(h.startswith(p) and len(h) > len(p) for h in lower)
    ]
    if len(prefixes) > 1:
        raise DataError(path, "both score_<label> and prob_<label> columns; use one prefix")
    if not prefixes:
        raise DataError(
            path,
            f"no score_<label> columns in header {header}; a multi-label CSV names its labels "
            "in them, e.g. 'labels,score_cat,score_dog'",
        )
    prefix = prefixes[0]
    cols = [i for i, h in enumerate(lower) if h.startswith(prefix) and len(h) > len(prefix)]
    names = [header[i][len(prefix) :] for i in cols]
    if len(set(names)) != len(names):
        raise DataError(path, f"repeated label in the {prefix}<label> columns: {names}")
    _check_rows(path, header, rows, delimiter)
    probs = _parse_scores(rows, cols, header, delimiter == ";", path)
    outside = ((probs < 0) | (probs > 1)).any(axis=1)
    if outside.any():
        line = rows[int(np.flatnonzero(outside)[0])][0]
        if prefix == "prob_":
            raise DataError(
                path,
                "prob_ columns must be probabilities in [0, 1]; name them score_<label> for logits",
                row=line,
            )
        logger.warning("%s: score_ columns are not in [0, 1] (e.g. row %d); applying the sigmoid",
                       path, line)  # fmt: skip
        probs = 1 / (1 + np.exp(-probs))
    targets = _label_sets([(ln, f[label_col]) for ln, f in rows], names, path, header[label_col])
    preds = None
    if pred_col is not None:
        preds = _label_sets([(ln, f[pred_col]) for ln, f in rows], names, path, header[pred_col])
    return targets, probs, preds, names
