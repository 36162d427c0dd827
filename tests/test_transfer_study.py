"""The transfer study and the lecture's task A -> task B example (the slow parts are marked)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from cli_process import assert_user_error

from cnnlab import api
from cnnlab.errors import CheckpointError, ConfigError
from cnnlab.transfer.study import (
    markdown_table,
    plot_study,
    summarize,
    transfer_study,
    write_class_subset,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _run(strategy: str, shots: int | None, seed: int, acc: float, per_class: float) -> dict:
    return {"strategy": strategy, "shots": shots, "seed": seed, "accuracy": acc,
            "ci_low": acc - 0.05, "ci_high": acc + 0.04, "labels_per_class": per_class}  # fmt: skip


def test_summary_table_and_plot_of_a_study(tmp_path):
    runs = [
        _run("scratch", 5, 0, 0.40, 5), _run("scratch", 5, 1, 0.50, 5),
        _run("fine-tune", 5, 0, 0.80, 5), _run("fine-tune", 5, 1, 0.70, 5),
        _run("scratch", None, 0, 0.95, 400), _run("fine-tune", None, 0, 0.96, 400),
    ]  # fmt: skip
    summary = summarize(runs)
    by = {(r["shots"], r["strategy"]): r for r in summary}
    assert by[(5, "scratch")]["accuracy"] == pytest.approx(np.mean([0.40, 0.50]))
    assert by[(5, "scratch")]["accuracy_std"] == pytest.approx(np.std([0.40, 0.50]))
    assert by[(5, "fine-tune")]["ci_low"] == pytest.approx(np.mean([0.75, 0.65]))
    assert by[(None, "fine-tune")]["seeds"] == 1
    study = {"model": "lenet5", "source": "runs/a", "data": "b", "epochs": 3, "seeds": [0, 1],
             "strategies": ["scratch", "fine-tune"], "summary": summary}  # fmt: skip
    table = markdown_table(study)
    assert "| labels per class | scratch | fine-tune |" in table
    assert "| 5 | 45.0 [40.0, 49.0] | 75.0 [70.0, 79.0] |" in table
    assert "| 400 (all) | 95.0 [90.0, 99.0] | 96.0 [91.0, 100.0] |" in table
    assert plot_study(study, tmp_path / "s.png").read_bytes()[:8] == PNG


def test_study_rejects_unknown_strategies_and_fields_it_sets_itself(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown strategy 'finetune'.*did you mean: fine-tune"):
        transfer_study("imagenet", "builtin:digits", strategies=("finetune",), out=tmp_path)
    # 0 labels per class once reached the loader as "option batch_size must be > 0"
    with pytest.raises(ConfigError, match=r"shots=0: each is the number of labelled images"):
        transfer_study("imagenet", "builtin:digits", shots=(5, 0), model="lenet5", out=tmp_path)
    with pytest.raises(ConfigError, match="sets 'init_from' itself"):
        transfer_study("imagenet", "builtin:digits", model="lenet5", out=tmp_path, init_from="x")
    with pytest.raises(
        ConfigError, match=r"pass model=NAME \(cnnlab transfer-study: --model NAME\)"
    ):
        transfer_study("imagenet", "builtin:digits", out=tmp_path)


def test_study_from_a_source_that_is_not_there_says_not_found(tmp_path):
    """A mistyped run folder was "not a cnnlab run/checkpoint, so the model is unknown; pass
    model=NAME", and with the model given it trained the scratch cells before the first transfer
    cell failed. Refused at once, naming the path, before anything trains or is written."""
    with pytest.raises(
        CheckpointError, match=r"source '\S*runs/nope' not found; give a cnnlab run"
    ):
        transfer_study(str(tmp_path / "runs/nope"), "builtin:digits", out=tmp_path / "s")
    with pytest.raises(CheckpointError, match=r"source '\S*runs/nope' not found"):
        transfer_study(str(tmp_path / "runs/nope"), "builtin:digits", model="lenet5",
                       strategies=("scratch", "fine-tune"), out=tmp_path / "s")  # fmt: skip
    assert not (tmp_path / "s").exists()
    assert_user_error(
        "transfer-study", str(tmp_path / "nope"), "--data", "builtin:digits", names="not found"
    )


#: a one-cell study (scratch needs no source weights): seconds
TINY_STUDY = {"model": "lenet5", "shots": (None,), "strategies": ("scratch",), "epochs": 1,
              "batch_size": 8, "device": "cpu"}  # fmt: skip
TINY_DATA = "builtin:shapes?n=60&size=16"


def test_a_study_refuses_the_users_files_in_its_folder_before_training(tmp_path, monkeypatch):
    """study.json / study.md / study.png of the user's in --out (or in the default folder) were
    overwritten without a word; refused in one line naming the file before anything trains."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "study.md").write_text("my notes")
    with pytest.raises(ConfigError, match=re.escape(
        f"--out {mine}: study.md exists and was not written by cnnlab, which never overwrites a "
        f"file it did not write: name a new or empty folder, or move {mine / 'study.md'}"
    )):  # fmt: skip
        transfer_study("imagenet", TINY_DATA, out=mine, **TINY_STUDY)
    assert (mine / "study.md").read_text() == "my notes" and sorted(mine.iterdir()) == [
        mine / "study.md"
    ]  # nothing trained, nothing recorded
    monkeypatch.chdir(tmp_path)
    default = Path("runs/transfer-study")
    default.mkdir(parents=True)
    (default / "study.json").write_text('{"mine": true}')
    with pytest.raises(ConfigError, match=r"^output folder runs/transfer-study: study\.json exists"
                       r".*give --out a new or empty folder"):  # fmt: skip
        transfer_study("imagenet", TINY_DATA, **TINY_STUDY)
    assert not (default / "runs").exists()


@pytest.mark.slow  # three one-cell studies: ~10 s
def test_a_study_replaces_its_own_files_and_those_of_an_earlier_cnnlab(tmp_path):
    """A study run again into its folder replaces its own study files (the folder's record lists
    them) and keeps the user's others; a study folder from before the record is cnnlab's too."""
    from cnnlab.run import OUTPUT_RECORD

    out = tmp_path / "study"
    # a number as the command line hands it over (text) is recorded as the config read it
    transfer_study("imagenet", TINY_DATA, out=out, **TINY_STUDY | {"batch_size": "8"})
    assert json.loads((out / "study.json").read_text())["train_overrides"]["batch_size"] == 8
    record = json.loads((out / OUTPUT_RECORD).read_text())["outputs"]
    assert record == dict.fromkeys(["study.json", "study.md", "study.png"], "transfer-study")
    (out / "notes.txt").write_text("mine")
    transfer_study("imagenet", TINY_DATA, out=out, **TINY_STUDY)  # again: its own files
    (out / OUTPUT_RECORD).unlink()  # as an older cnnlab left the folder
    study = transfer_study("imagenet", TINY_DATA, out=out, **TINY_STUDY)
    assert json.loads((out / "study.json").read_text())["runs"] == study["runs"]
    assert len(list((out / "runs").iterdir())) == 3 and (out / "notes.txt").read_text() == "mine"


def test_write_class_subset_keeps_only_the_asked_classes(tmp_path):
    out = write_class_subset("builtin:digits", tmp_path / "b", ["5", "7"], max_per_class=12)
    assert sorted(p.name for p in out.iterdir()) == ["5", "7"]
    assert all(len(list((out / c).glob("*.png"))) == 12 for c in ("5", "7"))
    with pytest.raises(ConfigError, match="not in builtin:digits"):
        write_class_subset("builtin:digits", tmp_path / "c", ["five"])


@pytest.fixture(scope="module")
def digit_tasks(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("digits")
    a = write_class_subset("builtin:digits", root / "A", [str(i) for i in range(5)])
    b = write_class_subset("builtin:digits", root / "B", [str(i) for i in range(5, 10)])
    return a, b


@pytest.mark.slow
def test_a_small_study_trains_every_cell_on_the_same_splits(digit_tasks, tmp_path):
    a, b = digit_tasks
    source = api.train(data=str(a), model="lenet5", epochs=3, batch_size=32, out=str(tmp_path),
                       name="A", report=False)  # fmt: skip
    study = transfer_study(
        str(source.run_dir), str(b), shots=(5, None), strategies=("scratch", "linear-probe"),
        epochs=2, out=tmp_path / "study", batch_size=32,
    )  # fmt: skip
    assert {p.name for p in (tmp_path / "study").iterdir()} >= {
        "study.json",
        "study.md",
        "study.png",
    }
    assert json.loads((tmp_path / "study" / "study.json").read_text())["runs"] == study["runs"]
    assert len(study["runs"]) == 4 and study["model"] == "lenet5"
    test_ids = set()
    for r in study["runs"]:
        run_dir = Path(r["run_dir"])
        metrics = json.loads((run_dir / "test_metrics.json").read_text())
        assert r["accuracy"] == metrics["accuracy"]
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        splits = json.loads((run_dir / "splits.json").read_text())["splits"]
        test_ids.add(tuple(splits["test"]))
        assert len(splits["train"]) == (25 if r["shots"] == 5 else r["train_images"])
        config = json.loads((run_dir / "config.json").read_text())
        assert (config["init_from"] is None) == (r["strategy"] == "scratch")
    assert len(test_ids) == 1  # every strategy and shot count is tested on the same images


@pytest.mark.slow
def test_lecture_example_fine_tuning_from_task_a_beats_scratch_on_task_b(tmp_path):
    """Task A: MNIST digits 0-4; task B: digits 5-9 with 10 labels per class, same budget.

    Measured (docs/transfer.md): scratch 48.8 % vs fine-tune 63.2 % test accuracy (seed 0). Task A trains at
    lr 0.02: at 0.05 its first epochs sit on the edge of stability, and seed 0 ends at 80.8 % or 99.2 % depending
    on float rounding (channels_last vs NCHW convolutions; gradients agree to 1e-9).
    """
    a = write_class_subset("builtin:mnist-sample", tmp_path / "A", [str(i) for i in range(5)])
    b = write_class_subset("builtin:mnist-sample", tmp_path / "B", [str(i) for i in range(5, 10)])
    common = {"model": "lenet5", "lr": 0.05, "report": False, "out": str(tmp_path / "runs")}
    task_a = api.train(data=str(a), epochs=5, batch_size=64, name="A", **(common | {"lr": 0.02}))
    assert task_a.test_metrics["accuracy"] > 0.95
    budget = {"data": str(b), "shots": 10, "epochs": 10, "batch_size": 16, "seed": 0}
    scratch = api.train(name="scratch", **budget, **common)
    tuned = api.train(name="fine-tune", init_from=str(task_a.run_dir), strategy="fine-tune",
                      **budget, **common)  # fmt: skip
    gain = tuned.test_metrics["accuracy"] - scratch.test_metrics["accuracy"]
    assert gain >= 0.10, (scratch.test_metrics["accuracy"], tuned.test_metrics["accuracy"])
    ids = [json.loads((r.run_dir / "splits.json").read_text())["splits"]["test"]
           for r in (scratch, tuned)]  # fmt: skip
    assert ids[0] == ids[1]


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("--seeds", "0,a", "'a' in '0,a' is not a whole number"),  # was int()'s traceback
        ("--shots", "5,x", "'x' in '5,x' is not a whole number >= 1 or all"),  # 0 is refused
        ("--shots", "0,all", "0 in '0,all': each is the number of labelled images per class"),
    ],
)
def test_cli_study_lists_that_are_not_numbers_are_one_line_errors(tmp_path, option, value, named):
    """Refused while the command line is read (no torch, no run needed), naming the option."""
    assert_user_error(
        "transfer-study", str(tmp_path), "--data", str(tmp_path), option, value,
        names=[f"argument {option}", named],
    )  # fmt: skip


def test_cli_study_table_keeps_one_row_per_line(tmp_path, monkeypatch, capsys):
    """On an 80-column output the table's rows were wrapped mid-cell ('[26.7, \\n80.0] |'): no
    markdown table to paste any more. The study is replaced by a fixed one."""
    from cnnlab.cli import main

    runs = [_run(s, k, 0, 0.5, k or 400) for k in (5, None) for s in ("scratch", "fine-tune",
            "linear-probe", "gradual")]  # fmt: skip
    study = {"model": "lenet5", "source": "runs/a", "data": "b", "epochs": 3, "seeds": [0],
             "strategies": ["scratch", "linear-probe", "fine-tune", "gradual"],
             "summary": summarize(runs)}  # fmt: skip
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setattr(api, "transfer_study", lambda *args, **kwargs: study)
    assert main(["transfer-study", "runs/a", "--data", "b", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    table = [ln for ln in markdown_table(study).splitlines() if ln.startswith("|")]
    assert len(table) == 4 and len(table[2]) > 80  # the rows are wider than the terminal
    assert all(row in printed.splitlines() for row in table)
