"""k-fold assignment for cross-validation (`cnnlab cv`): which fold holds out each sample.

Single-label targets ``(N,)`` (class indices) go through scikit-learn's ``StratifiedKFold``: it
deals each class's samples round-robin over the folds, so a class's count in any two folds
differs by at most one. Multi-label target matrices ``(N, C)`` of 0/1 go through iterative
stratification (Sechidis et al. 2011) as the maintained ``iterative-stratification`` package
implements it (``MultilabelStratifiedKFold``): each label's positives are spread over the folds as
evenly as the label combinations allow. Both are shuffled with ``seed``, so a seed names one
assignment.

A fold's validation part (checkpoint selection, early stopping) is carved from the other k - 1
folds, stratified and seeded the same way; the held-out fold is the fold's test split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cnnlab.data.sources import stratified_split
from cnnlab.errors import ConfigError, DataError


def check_folds(folds: object) -> int:
    """``--folds`` as an int >= 2; else a one-line ConfigError naming the option."""
    try:
        k = int(str(folds).strip())
    except ValueError:
        raise ConfigError(f"option folds expects an integer >= 2, got {folds!r}") from None
    if k < 2:
        raise ConfigError(
            f"option folds must be >= 2, got {k}: k-fold cross-validation trains on k - 1 folds "
            "and tests on the one held out (try --folds 5)"
        )
    return k


def _name(c: int, class_names: Sequence[str] | None) -> str:
    return str(class_names[c]) if class_names is not None and c < len(class_names) else str(c)


def _label_counts(targets: np.ndarray) -> np.ndarray:
    """Samples per class (single-label) or positives per label (multi-label)."""
    if targets.ndim == 1:
        if len(targets) and targets.min() < 0:
            raise ValueError("class indices must be >= 0")
        return np.bincount(targets.astype(np.int64))
    if targets.ndim == 2:
        if not np.isin(targets, (0, 1)).all():
            raise ValueError("a multi-label target matrix holds only 0 and 1")
        return targets.astype(np.int64).sum(axis=0)
    raise ValueError(
        f"targets must be (N,) class indices or an (N, C) 0/1 matrix, got {targets.shape}"
    )


def fold_of_samples(
    targets: np.ndarray,
    folds: int,
    seed: int,
    *,
    class_names: Sequence[str] | None = None,
    where: object = "dataset",
) -> np.ndarray:
    """``(N,)`` int64: the fold (0 .. k-1) that holds out each sample.

    ``targets``: ``(N,)`` class indices (``StratifiedKFold``) or an ``(N, C)`` 0/1 label matrix
    (``MultilabelStratifiedKFold``). Every class (label) that occurs needs at least ``folds``
    samples (positives), one per fold; else a DataError on ``where`` naming the classes and counts.
    ``class_names`` (index -> name) only words that error."""
    k = check_folds(folds)
    targets = np.asarray(targets)
    counts = _label_counts(targets)
    n = len(targets)
    if n < k:
        raise DataError(where, f"--folds {k} is more than the {n} samples; lower --folds")

    small = {_name(c, class_names): int(m) for c, m in enumerate(counts) if 0 < m < k}
    if small:
        least = min(small.values())
        fix = (
            f"lower --folds to at most {least} or add images"
            if least >= 2
            else "add images to those classes (a class with one image cannot be cross-validated)"
        )
        what = "labels with fewer positives" if targets.ndim == 2 else "classes with fewer samples"
        raise DataError(
            where, f"--folds {k}: {what} than folds, {small} (each needs one per fold); {fix}"
        )
    placeholder = np.zeros((n, 1))  # the splitters look at the targets only
    if targets.ndim == 1:
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_of = np.full(n, -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splitter.split(placeholder, targets)):
        fold_of[held_out] = fold
    assert (fold_of >= 0).all(), "every sample is held out by exactly one fold"
    return fold_of


def fold_split(
    fold_of: np.ndarray,
    fold: int,
    targets: np.ndarray,
    val_fraction: float,
    seed: int,
    *,
    class_names: Sequence[str] | None = None,
    where: object = "dataset",
) -> dict[str, np.ndarray]:
    """Sorted sample indices of fold ``fold``'s train / val / test splits: test is the fold held
    out, val a stratified, seeded ``val_fraction`` of the other folds (none when 0), train the rest.
    Too few images outside the fold for that is a DataError on ``where`` naming the fold."""
    fold_of, targets = np.asarray(fold_of), np.asarray(targets)
    test = np.flatnonzero(fold_of == fold)
    rest = np.flatnonzero(fold_of != fold)
    if val_fraction <= 0:
        return {"train": rest, "test": test}
    if targets.ndim == 1:
        _check_room_for_val(targets, rest, fold, val_fraction, class_names, where)
        part = stratified_split(targets[rest], val_fraction, 0.0, seed, class_names=class_names)
        train_idx, val_idx = part["train"], part["val"]
    else:
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        splitter = MultilabelStratifiedShuffleSplit(
            n_splits=1, test_size=val_fraction, random_state=seed
        )
        train_idx, val_idx = next(splitter.split(np.zeros((len(rest), 1)), targets[rest]))
    return {"train": np.sort(rest[train_idx]), "val": np.sort(rest[val_idx]), "test": test}


def _check_room_for_val(
    targets: np.ndarray,
    rest: np.ndarray,
    fold: int,
    val_fraction: float,
    class_names: Sequence[str] | None,
    where: object,
) -> None:
    """Said in cross-validation's terms before :func:`stratified_split` (whose messages speak of
    --test-fraction): a stratified validation needs two images of each class outside the held-out
    fold and must leave one of each for training."""
    present = np.flatnonzero(np.bincount(targets) > 0)
    outside = np.bincount(targets[rest], minlength=len(np.bincount(targets)))
    small = {_name(c, class_names): int(outside[c]) for c in present if outside[c] < 2}
    if small:
        raise DataError(
            where,
            f"fold {fold + 1}: classes {small} have fewer than 2 images outside the held-out fold, "
            "too few to split off a stratified validation; use fewer --folds, add images or set "
            "--val-fraction 0",
        )
    n_val = math.ceil(val_fraction * len(rest))
    if len(rest) - n_val < len(present):
        raise DataError(
            where,
            f"fold {fold + 1}: --val-fraction {val_fraction:g} of the {len(rest)} images outside "
            f"the held-out fold leaves fewer than {len(present)} for training; lower --val-fraction",
        )
