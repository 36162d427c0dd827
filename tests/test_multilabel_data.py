"""Multi-label data: builtin:multishapes, the two multi-label CSV forms, their bad rows, and the
iterative-stratification split."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnnlab.config import TrainConfig, make_config
from cnnlab.data.builtin import SHAPE_CLASSES, load_builtin
from cnnlab.data.sources import load_source, multilabel_split
from cnnlab.errors import ConfigError, DataError


def _cfg(**kw):
    return make_config(TrainConfig, **kw)


def test_multishapes_is_seeded_and_its_labels_are_the_shapes_drawn() -> None:
    a = load_builtin("multishapes?n=40&size=32&seed=3&max_objects=3")
    b = load_builtin("multishapes?n=40&size=32&seed=3&max_objects=3")
    c = load_builtin("multishapes?n=40&size=32&seed=4&max_objects=3")
    assert np.array_equal(a.images, b.images) and np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.targets, c.targets)
    assert a.targets.shape == (40, len(SHAPE_CLASSES)) and a.class_names == list(SHAPE_CLASSES)
    assert set(a.targets.sum(axis=1)) <= {1, 2, 3} and a.targets.sum(axis=0).min() > 0
    # bright pixels (shapes are drawn in 120..255, the background is 0..~90) lie in as many
    # 2 x 2 grid cells as the image has labels: one shape per cell
    bright = a.images.max(axis=3) >= 120  # (N, 32, 32)
    cells = bright.reshape(40, 2, 16, 2, 16).any(axis=(2, 4)).sum(axis=(1, 2))
    np.testing.assert_array_equal(cells, a.targets.sum(axis=1))


def test_multishapes_bad_options() -> None:
    with pytest.raises(ConfigError, match="max_objects"):
        load_builtin("multishapes?max_objects=7")
    with pytest.raises(ConfigError, match="did you mean"):
        load_builtin("multishapes?max_object=2")


def _images(folder, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


LABELS = ["cat", "dog;cat", "dog", "bird;dog", "cat;bird", "bird", "dog", "cat", "bird;cat", "dog"]


def test_csv_with_semicolon_labels(tmp_path) -> None:
    names = _images(tmp_path, len(LABELS))
    rows = "".join(f"{n},{lab}\n" for n, lab in zip(names, LABELS, strict=True))
    (tmp_path / "data.csv").write_text("path,labels\n" + rows)
    b = load_source(_cfg(data=str(tmp_path / "data.csv"), val_fraction=0, test_fraction=0))
    assert b.multilabel and b.class_names == ["bird", "cat", "dog"]
    train = b.splits["train"]
    got = {sid: tuple(t) for sid, t in zip(train.ids, train.targets.tolist(), strict=True)}
    assert got["img1.png"] == (0, 1, 1) and got["img3.png"] == (1, 0, 1)
    assert got["img0.png"] == (0, 1, 0)


def test_csv_with_one_column_per_label_keeps_the_declared_order(tmp_path) -> None:
    names = _images(tmp_path, 4)
    (tmp_path / "d.csv").write_text(
        "path,Zebra,ant\n" + f"{names[0]},1,0\n{names[1]},1,1\n{names[2]},0,0\n{names[3]},0,1\n"
    )
    b = load_source(_cfg(data=str(tmp_path / "d.csv"), val_fraction=0, test_fraction=0))
    assert b.class_names == ["Zebra", "ant"]  # the header's order and case
    t = dict(zip(b.splits["train"].ids, b.splits["train"].targets.tolist(), strict=True))
    assert t[names[1]] == [1, 1] and t[names[2]] == [0, 0]  # an image may carry no label


@pytest.mark.parametrize(
    ("header", "row", "match"),
    [
        ("path,labels", "img1.png,", "empty labels"),
        ("path,cat,dog", "img1.png,1,2", "label column 'dog' of 'img1.png' holds '2'"),
        ("path,cat,dog", "img1.png,yes,0", "holds 'yes'"),
    ],
)
def test_bad_multilabel_rows_name_the_file_and_row(tmp_path, header, row, match) -> None:
    names = _images(tmp_path, 2)
    good = f"{names[0]},cat" if header.endswith("labels") else f"{names[0]},1,0"
    (tmp_path / "bad.csv").write_text(f"{header}\n{good}\n{row}\n")
    with pytest.raises(DataError, match=match) as err:
        load_source(_cfg(data=str(tmp_path / "bad.csv")))
    assert "bad.csv, row 3" in str(err.value)


def test_multilabel_split_spreads_every_label() -> None:
    targets = load_builtin("multishapes?n=200&size=16&seed=0").targets
    parts = multilabel_split(targets, 0.2, 0.2, seed=0)
    every = np.sort(np.concatenate(list(parts.values())))
    np.testing.assert_array_equal(every, np.arange(200))  # a partition
    # iterative stratification trades exact sizes for label balance: 40 +- 8 of 200
    assert abs(len(parts["test"]) - 40) <= 8 and abs(len(parts["val"]) - 40) <= 8
    share = targets.mean(axis=0)
    for part in parts.values():  # each label's share within 0.1 of the whole set's
        assert np.all(np.abs(targets[part].mean(axis=0) - share) < 0.1)
    again = multilabel_split(targets, 0.2, 0.2, seed=0)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_builtin_multishapes_bundle_is_multilabel() -> None:
    b = load_source(_cfg(data="builtin:multishapes?n=60&size=16", val_fraction=0.2))
    assert b.multilabel and b.splits["train"].targets.shape[1] == 5
    assert sum(len(s) for s in b.splits.values()) == 60
