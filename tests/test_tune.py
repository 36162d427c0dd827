"""`cnnlab tune` (issue 24): the search space, the study's sampler, pruning callback, trial
accounting over several workers and dead workers, and the whole command on builtin:digits.

Fast tests use Optuna's storages directly with no training; the studies that train (12 trials with
pruning, a SIGKILLed study resumed, two workers on one journal) are marked slow."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_process import SRC, assert_user_error, cnnlab, ok

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from cnnlab.config import TrainConfig, make_config  # noqa: E402
from cnnlab.errors import ConfigError  # noqa: E402
from cnnlab.tasks.configs import SegmentConfig  # noqa: E402
from cnnlab.tune import study as st  # noqa: E402
from cnnlab.tune.space import Param, choice_of, option_value, parse_space  # noqa: E402


# -- the search space ---------------------------------------------------------------------------
def test_space_words_become_typed_parameters() -> None:
    params = parse_space(
        TrainConfig,
        ["lr=log:1e-4:1e-1", "epochs=3:8", "weight-decay=0:0.01",
         "model=resnet18,mobilenet_v3_small", "augment=crop,crop+flip,none"],
    )  # fmt: skip
    assert params == [
        Param("lr", "float", 1e-4, 1e-1, log=True),
        Param("epochs", "int", 3, 8),
        Param("weight_decay", "float", 0.0, 0.01),
        Param("model", "categorical", choices=("resnet18", "mobilenet_v3_small")),
        Param("augment", "categorical", choices=("crop", "crop+flip", "none")),
    ]
    assert isinstance(params[1].low, int) and isinstance(params[0].low, float)
    # a list option's choice is the config's tuple, and back
    cfg = make_config(TrainConfig, augment=option_value(TrainConfig, "augment", "crop+flip"))
    assert cfg.augment == ("crop", "flip")
    assert (
        make_config(TrainConfig, augment=option_value(TrainConfig, "augment", "none")).augment == ()
    )
    assert choice_of(TrainConfig, "augment", ("crop", "flip")) == "crop+flip"
    assert choice_of(TrainConfig, "augment", ()) == "none"
    assert [Param.from_dict(p.to_dict()) for p in params] == params
    assert params[0].text() == "lr=log:0.0001:0.1" and params[1].text() == "epochs=3:8"


def test_space_file_same_as_words(tmp_path: Path) -> None:
    f = tmp_path / "space.toml"
    f.write_text('[space]\nlr = "log:1e-4:1e-1"\naugment = ["crop", ["crop", "flip"]]\n'
                 'batch_size = [32, 64]\n')  # fmt: skip
    words = parse_space(TrainConfig, ["lr=log:1e-4:1e-1", "augment=crop,crop+flip"])
    from_file = parse_space(TrainConfig, file=f)
    assert from_file[:2] == words
    assert from_file[2] == Param("batch_size", "categorical", choices=(32, 64))


@pytest.mark.parametrize(
    ("word", "named"),
    [
        ("lerning_rate=log:1e-4:1e-1", ["lerning_rate", "did you mean"]),
        ("lr=log:0:1", ["lr", "LOW > 0"]),
        ("lr=0.1:0.01", ["LOW must be below HIGH"]),
        ("epochs=1.5:4", ["epochs", "integers"]),
        ("augment=crop,spin", ["spin", "augmentation"]),
        ("model=lenet5", ["at least two"]),
        ("optimizer=0:1", ["optimizer", "not a number"]),
        ("data=a,b", ["data", "same for every trial"]),
        ("lr", ["NAME=SPEC"]),
    ],
)
def test_space_errors_name_the_option(word: str, named: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_space(TrainConfig, [word])
    message = str(err.value)
    assert "\n" not in message and message.startswith("--space")
    for name in named:
        assert name in message, message


def test_model_names_of_the_space_are_checked_before_the_first_trial() -> None:
    """`--space model=lenet5,resnet1` ran trial 0 (lenet5) and stopped the study at the trial that
    drew the typo; docs/tune.md promises every choice checked before the first trial. The names
    each task builds from are checked, timm: names are left to timm."""
    from cnnlab.tasks.configs import DetectConfig, VideoConfig

    cases = [
        (TrainConfig, "model=lenet5,resnet1", "unknown model 'resnet1' (did you mean: resnet18"),
        (SegmentConfig, "model=unet,unett", "unknown model 'unett' (did you mean: unet"),
        (SegmentConfig, "encoder=resnet18,lenett5", "unknown encoder 'lenett5'"),
        (DetectConfig, "model=fasterrcnn,fcoss", "unknown model 'fcoss' (did you mean: fcos"),
        (DetectConfig, "backbone=resnet18,resnet1", "unknown backbone 'resnet1'"),
        (VideoConfig, "model=r3d_small,r3d_19", "unknown model 'r3d_19'"),
    ]
    for cls, word, said in cases:
        with pytest.raises(ConfigError, match=re.escape(f"--space {word}: {said}")):
            parse_space(cls, [word])
    assert len(parse_space(TrainConfig, ["model=lenet5,resnet18,timm:resnet10t"])[0].choices) == 3
    assert parse_space(VideoConfig, ["model=r3d_small,lenet5"])[0].choices == (
        "r3d_small",
        "lenet5",
    )
    assert parse_space(SegmentConfig, ["model=unet,fcn_resnet50"])[0].choices[1] == "fcn_resnet50"


def test_space_checks_other_tasks_options() -> None:
    """Another task's config decides what is an option (segmentation's loss words, not ce/focal)."""
    with pytest.raises(ConfigError, match="focal_gamma"):
        parse_space(SegmentConfig, ["focal_gamma=0:2"])
    assert parse_space(TrainConfig, ["focal_gamma=0:2"])[0].kind == "float"


def test_cli_space_error_is_one_line(tmp_path: Path, capsys) -> None:
    from cnnlab.cli import main

    code = main(["tune", "--space", "lr=log:0:1", "--out", str(tmp_path / "t")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "lr" in lines[0] and "LOW > 0" in lines[0], lines
    code = main(["tune", "--study", "new", "--out", str(tmp_path / "t2")])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "--space" in lines[0], lines


# -- sampling, pruning, accounting ----------------------------------------------------------------
def test_trial_zero_is_the_default_configuration_and_trials_differ() -> None:
    params = parse_space(TrainConfig, ["lr=log:1e-3:0.5", "augment=none,crop,crop+flip",
                                       "batch_size=16:256", "model=alexnet,vgg11"])  # fmt: skip
    base = st.baseline(TrainConfig, params, {"batch_size": "64"})
    defaults = TrainConfig()
    # model lenet5 is not among the choices: that one is sampled
    assert base == {"lr": defaults.lr, "augment": "crop", "batch_size": 64}
    space = {p.name: st.distribution(p) for p in params}
    drawn = []
    for seed in (0, 0, 1):
        study = optuna.create_study(sampler=st.Sampler(seed, 3, base), direction="maximize")
        trials = [study.ask(space) for _ in range(4)]
        for t in trials:
            study.tell(t, 0.5)
        drawn.append([t.params for t in trials])
    assert {k: drawn[0][0][k] for k in base} == base
    assert drawn[0] == drawn[1]  # the same seed: the same study
    assert drawn[0][1:] != drawn[2][1:]  # another seed: other trials (trial 0 stays the baseline)
    assert len({json.dumps(p, sort_keys=True) for p in drawn[0]}) == 4


def _trainer() -> SimpleNamespace:
    return SimpleNamespace(state=SimpleNamespace(stop=False, stop_reason=""))  # a Trainer's shape


def test_prune_callback_stops_a_poor_trial_with_its_reason() -> None:
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=2))  # fmt: skip
    for good in (0.9, 0.8):
        t = study.ask()
        for epoch in (1, 2):
            t.report(good, epoch)
        study.tell(t, good)
    ok_trial, poor = study.ask(), study.ask()
    keep, stop = _trainer(), _trainer()
    st.PruneTrial(ok_trial, "val_accuracy", "median").on_epoch_end(
        keep, {"epoch": 1, "val_accuracy": 0.95}
    )
    cb = st.PruneTrial(poor, "val_accuracy", "median")
    cb.on_epoch_end(stop, {"epoch": 1, "val_accuracy": 0.2})
    assert not keep.state.stop
    assert stop.state.stop and cb.pruned and "pruned" in stop.state.stop_reason
    assert "val_accuracy 0.2000 at epoch 1" in stop.state.stop_reason
    with pytest.raises(ConfigError, match="validation split"):
        cb.on_epoch_end(stop, {"epoch": 2, "train_loss": 0.3})


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruners_stop_poor_trials_and_keep_the_best(pruner: str) -> None:
    """Trials whose validation accuracy climbs to their own quality over 9 epochs: the pruner
    stops some of the poorer ones and never the best one (it is best at every epoch)."""
    import numpy as np

    qualities = np.random.default_rng(0).uniform(0.1, 0.99, 30)
    study = optuna.create_study(direction="maximize", pruner=st.make_pruner(pruner, 9, 30))
    pruned = []
    for q in qualities:
        trial, trainer = study.ask(), _trainer()
        cb = st.PruneTrial(trial, "val_accuracy", pruner)
        for epoch in range(1, 10):
            cb.on_epoch_end(trainer, {"epoch": epoch, "val_accuracy": float(q) * epoch / 9})
            if trainer.state.stop:
                break
        pruned.append(cb.pruned)
        if cb.pruned:
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, float(q))
    assert sum(pruned) >= 5, pruned
    assert not pruned[int(np.argmax(qualities))]


def test_surplus_trials_never_run_and_dead_workers_trials_are_failed(tmp_path: Path) -> None:
    store, _ = st.open_storage(None, tmp_path)
    study = optuna.create_study(study_name="s", storage=store)
    machine = st.machine_id()
    first = [study.ask() for _ in range(3)]  # three live trials of "other workers"
    for t in first:
        t.set_user_attr("machine", machine)
        t.set_user_attr("pid", os.getpid())
    extra = study.ask()
    assert not st.claim(study, extra, 3)  # a fourth place does not exist
    assert study.get_trials()[3].state == TrialState.FAIL
    assert study.get_trials()[3].user_attrs["surplus"]
    study.tell(first[0], 1.0)
    study.tell(first[1], state=TrialState.FAIL)  # a failed trial frees its place
    assert st.claim(study, study.ask(), 3)
    # a process that is gone: its RUNNING trial is failed at once; a live one is left alone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first[2].set_user_attr("pid", dead.pid)
    assert st.fail_stale(study, machine) == [2]
    frozen = study.get_trials()[2]
    assert frozen.state == TrialState.FAIL and "stopped" in st.trial_note(frozen, study.user_attrs)
    assert st.trial_rows(study, [], "val_loss")[2]["note"] == st.trial_note(
        frozen, study.user_attrs
    )
    assert study.get_trials()[4].state == TrialState.RUNNING  # no pid yet, just started
    # another machine's trial: only its heartbeat tells
    other = study.ask()
    other.set_user_attr("machine", "elsewhere/0")
    other.set_user_attr("pid", dead.pid)
    other.set_user_attr("heartbeat", time.time())
    assert st.fail_stale(study, machine) == []
    other.set_user_attr("heartbeat", time.time() - st.STALE_S - 1)
    assert st.fail_stale(study, machine) == [other.number]


def test_rdb_url_is_accepted_and_a_bad_one_named(tmp_path: Path) -> None:
    store, where = st.open_storage(f"sqlite:///{tmp_path / 'study.db'}", tmp_path)
    study = optuna.create_study(study_name="s", storage=store)
    study.tell(study.ask(), 1.0)
    assert isinstance(store, optuna.storages.RDBStorage) and (tmp_path / "study.db").is_file()
    assert len(optuna.load_study(study_name="s", storage=where).trials) == 1
    with pytest.raises(ConfigError, match="--storage nosuchdb://"):
        st.open_storage("nosuchdb://x", tmp_path)


# -- whole studies (slow: they train) -------------------------------------------------------------
FIXED = ("--data", "builtin:digits", "--batch-size", "32", "--precision", "32", "--no-report")


def _study(storage: Path, name: str = "default"):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=name,
                             storage=JournalStorage(JournalFileBackend(str(storage))))  # fmt: skip


def _best_val(history_csv: Path) -> float:
    import csv

    with open(history_csv) as f:
        return max(float(r["val_accuracy"]) for r in csv.DictReader(f))


@pytest.mark.slow
def test_twelve_trials_on_digits_with_pruning(tmp_path: Path) -> None:
    tune_dir = tmp_path / "tune"
    proc = ok(
        "tune", *FIXED, "--epochs", "4", "--trials", "12", "--out", str(tune_dir),
        "--space", "lr=log:1e-3:0.5", "--space", "augment=none,crop,crop+flip",
        "--space", "batch_size=32,64", cwd=tmp_path, timeout=1800,
    )  # fmt: skip
    study = _study(tune_dir / "study.journal")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 12
    assert states.count(TrialState.PRUNED) >= 3, states
    # the default configuration, trained on its own as `cnnlab train` would
    ok("train", *FIXED, "--epochs", "4", "--out", str(tmp_path / "runs"), "--name", "default",
       cwd=tmp_path)  # fmt: skip
    default = _best_val(tmp_path / "runs" / "default" / "metrics.csv")
    assert study.best_value >= default
    # each trial is a run folder; a pruned one says so
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    run_json = json.loads((Path(pruned.user_attrs["run_dir"]) / "run.json").read_text())
    assert run_json["stop_reason"].startswith("pruned by cnnlab tune")
    assert not (Path(pruned.user_attrs["run_dir"]) / "test_metrics.json").exists()
    rows = (tune_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("trial,state,val_accuracy")
    assert "McNemar" in proc.stdout and (
        "significantly better" in proc.stdout or "a tie" in proc.stdout
    )
    assert "parameter importances" in proc.stdout
    # the best configuration reruns as the best trial ran
    best = json.loads((tune_dir / "best_config.json").read_text())
    assert best["lr"] == pytest.approx(study.best_params["lr"])
    ok("train", "--config", str(tune_dir / "best_config.json"), "--out", str(tmp_path / "runs"),
       "--name", "rerun", cwd=tmp_path)  # fmt: skip
    assert _best_val(tmp_path / "runs" / "rerun" / "metrics.csv") == pytest.approx(
        study.best_value, abs=1e-6
    )


def _tune_process(tmp_path: Path, *args: str) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "tune", *FIXED, "--epochs", "2", *args],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_a_killed_study_resumes_with_its_finished_trials(tmp_path: Path) -> None:
    args = ("--trials", "5", "--out", str(tmp_path / "tune"), "--space", "lr=log:1e-3:0.5")
    journal = tmp_path / "tune" / "study.journal"
    proc = _tune_process(tmp_path, *args)
    deadline = time.time() + 900
    while time.time() < deadline:
        # often: a quiet machine runs a 2-epoch trial in about a second, and the window (two
        # finished, one running) must not pass unseen (polling every 2 s waited out the deadline)
        time.sleep(0.1)
        assert proc.poll() is None, (
            f"the study ended before it could be killed: {proc.stderr.read()}"
        )
        if journal.is_file():
            trials = _study(journal).trials
            if sum(t.state.is_finished() for t in trials) >= 2 and any(
                t.state == TrialState.RUNNING for t in trials
            ):
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {t.number: t.value for t in _study(journal).trials if t.state.is_finished()}
    assert len(before) >= 2
    ok("tune", *FIXED, "--epochs", "2", *args, cwd=tmp_path, timeout=1800)
    after = _study(journal).trials
    finished = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5
    assert {n: v for n, v in before.items()} == {
        t.number: t.value for t in after if t.number in before
    }
    killed = [t for t in after if t.state == TrialState.FAIL]
    notes = _study(journal).user_attrs
    assert killed and all("stopped" in st.trial_note(t, notes) for t in killed)


@pytest.mark.slow
def test_two_workers_share_a_journal_and_run_each_trial_once(tmp_path: Path) -> None:
    journal = tmp_path / "shared" / "study.journal"
    space = ("--space", "lr=log:1e-3:0.5", "--space", "augment=none,crop")
    workers = [
        _tune_process(
            tmp_path,
            "--trials",
            "12",
            "--study",
            "both",
            "--storage",
            str(journal),
            "--out",
            str(tmp_path / f"machine{i}"),
            *space,
        )  # fmt: skip
        for i in (1, 2)
    ]
    for w in workers:
        out, err = w.communicate(timeout=1800)
        assert w.returncode == 0, err[-3000:]
        assert "Traceback" not in err
    trials = _study(journal, "both").trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 12
    ran = [t for t in trials if not t.user_attrs.get("surplus")]
    folders = [p.name for i in (1, 2) for p in (tmp_path / f"machine{i}").glob("trial-*")]
    assert sorted(folders) == sorted(f"trial-{t.number:03d}" for t in ran)  # one folder each
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 12
    assert {t.user_attrs["pid"] for t in finished} == {w.pid for w in workers}
    assert not (tmp_path / "machine1" / "study.journal").exists()


def test_cnnlab_tune_help_lists_its_options() -> None:
    proc = cnnlab("tune", "--help")
    assert proc.returncode == 0
    for option in ("--space", "--space-file", "--trials", "--study", "--storage", "--pruner",
                   "--lr", "--model"):  # fmt: skip
        assert option in proc.stdout
    assert_user_error("tune", "--trials", "x", names="--trials")


@pytest.mark.slow
def test_segmentation_study_on_the_same_code(tmp_path: Path) -> None:
    """--task segment: the same study code on segmentation's config, fit shell and monitor."""
    tune_dir = tmp_path / "tune"
    proc = ok(
        "tune", "--task", "segment", "--data", "builtin:shapes?n=40&size=16", "--encoder", "lenet5",
        "--image-size", "16", "--epochs", "2", "--batch-size", "4", "--precision", "32",
        "--no-report", "--trials", "3", "--pruner", "none", "--out", str(tune_dir),
        "--space", "lr=log:1e-3:0.1", cwd=tmp_path,
    )  # fmt: skip
    study = _study(tune_dir / "study.journal")
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) == 3
    assert "val_miou" in (tune_dir / "trials.csv").read_text().splitlines()[0]
    best = json.loads((tune_dir / "best_config.json").read_text())
    assert best["encoder"] == "lenet5" and best["lr"] == pytest.approx(study.best_params["lr"])
    assert "cnnlab segment train --config" in proc.stdout
    assert "no per-sample test predictions" in proc.stdout


TINY = {"space": ["lr=log:0.01:0.1"], "data": "builtin:shapes?n=60&size=16", "epochs": 1,
        "batch_size": 8, "report": False, "device": "cpu"}  # fmt: skip


def test_tune_refuses_the_users_files_in_its_folder_before_any_trial(
    tmp_path: Path, monkeypatch
) -> None:
    """trials.csv, importances.json, best_config.json, comparison.json and test/ of the user's in
    --out (or in the default runs/tune-STUDY/) were overwritten by the summary; refused in one line
    naming the file before the first trial trains."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "best_config.json").write_text('{"lr": 0.1}')
    with pytest.raises(ConfigError, match=re.escape(
        f"--out {mine}: best_config.json exists and was not written by cnnlab, which never "
        f"overwrites a file it did not write: name a new or empty folder, or move "
        f"{mine / 'best_config.json'}"
    )):  # fmt: skip
        st.tune(trials=1, out=mine, **TINY)
    assert [p.name for p in mine.iterdir()] == ["best_config.json"]  # no journal, no trial
    monkeypatch.chdir(tmp_path)
    default = Path("runs/tune-default/test")
    default.mkdir(parents=True)
    (default / "my-results.csv").write_text("x")
    with pytest.raises(ConfigError, match=r"^output folder runs/tune-default: test/ exists and "
                       r"was not written by cnnlab.*give --out a new or empty folder"):  # fmt: skip
        st.tune(trials=1, **TINY)
    assert sorted(p.name for p in default.parent.iterdir()) == ["test"]


@pytest.mark.slow  # three one-epoch trials: ~10 s
def test_a_summary_replaces_its_own_files_and_those_of_an_earlier_cnnlab(tmp_path: Path) -> None:
    """The next summary of a study replaces the last one's files (the folder's record lists
    them); a tune folder from before the record (trials.csv of tune's columns) is cnnlab's too:
    its study resumes and is summed up again."""
    from cnnlab.run import OUTPUT_RECORD

    out = tmp_path / "tune"
    st.tune(trials=1, out=out, **TINY)
    assert "trials.csv" in json.loads((out / OUTPUT_RECORD).read_text())["outputs"]
    st.tune(trials=2, out=out, **TINY)  # the study goes on: its own summary replaced
    (out / OUTPUT_RECORD).unlink()  # as an older cnnlab left the folder
    result = st.tune(trials=3, out=out, **TINY)
    assert len(result["trials"]) == 3 and (out / OUTPUT_RECORD).is_file()
    assert len((out / "trials.csv").read_text().splitlines()) == 4


def test_tune_leaves_optunas_verbosity_as_it_found_it(tmp_path: Path) -> None:
    """Optuna's verbosity is the whole process's: tune quiets Optuna while its study runs and
    puts the caller's level back after, also when it stops on an error."""
    before = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.DEBUG)
        with pytest.raises(ConfigError, match="--pruner 'nope'"):  # refused inside the study
            st.tune(space=["lr=log:0.01:0.1"], trials=1, pruner="nope", out=tmp_path,
                    data="builtin:digits", epochs=1, device="cpu")  # fmt: skip
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
        with st.optuna_warnings_only():
            assert optuna.logging.get_verbosity() == optuna.logging.WARNING
        assert optuna.logging.get_verbosity() == optuna.logging.DEBUG
    finally:
        optuna.logging.set_verbosity(before)


# -- recipe and ema in the space (issue 22) ---------------------------------------------------------
def test_recipe_and_ema_choices_and_their_baseline() -> None:
    """ema's off choice (off, none or 0: one spelling) is the config's 0 (off); the default
    configuration (recipe none, ema None) is trial 0's value of both."""
    params = parse_space(TrainConfig, ["recipe=none,light,standard,strong", "ema=none,0.99,0.999"])
    assert params == [
        Param("recipe", "categorical", choices=("none", "light", "standard", "strong")),
        Param("ema", "categorical", choices=("off", "0.99", "0.999")),
    ]
    assert parse_space(TrainConfig, ["ema=0,0.999"])[0].choices == ("off", "0.999")
    assert st.baseline(TrainConfig, params, {}) == {"recipe": "none", "ema": "off"}
    assert make_config(TrainConfig, ema=option_value(TrainConfig, "ema", "off")).ema == 0.0
    assert make_config(TrainConfig, ema=option_value(TrainConfig, "ema", "0.99")).ema == 0.99
    assert choice_of(TrainConfig, "ema", None) == choice_of(TrainConfig, "ema", 0.0) == "off"
    with pytest.raises(ConfigError, match=r"--space ema=off,1.5: option ema must be a decay"):
        parse_space(TrainConfig, ["ema=off,1.5"])
    with pytest.raises(ConfigError, match=r"--space recipe=none,stron: .*'stron'"):
        parse_space(TrainConfig, ["recipe=none,stron"])


def test_augmentation_strengths_are_searched_with_their_augmentation_fixed() -> None:
    """mixup_alpha and the other strengths are options like any other; each needs its
    augmentation in every trial, so a space where a trial would lack it fails before any runs."""
    fixed = {"recipe": "strong"}
    words = ["mixup_alpha=log:0.1:1", "randaugment_magnitude=5:15", "erasing_prob=0:0.5"]
    params = parse_space(TrainConfig, words, fixed=fixed)
    assert params == [
        Param("mixup_alpha", "float", 0.1, 1.0, log=True),
        Param("randaugment_magnitude", "int", 5, 15),
        Param("erasing_prob", "float", 0.0, 0.5),
    ]
    # trial 0: the default configuration, whose values lie in the space
    assert st.baseline(TrainConfig, params, fixed) == {
        "mixup_alpha": 0.2, "randaugment_magnitude": 9, "erasing_prob": 0.25,
    }  # fmt: skip
    with pytest.raises(ConfigError, match=r"^--space mixup_alpha=log:0.1:1: option mixup_alpha="
                       r"0.1 acts only on augmentation 'mixup'.*--recipe standard / strong"):  # fmt: skip
        parse_space(TrainConfig, ["mixup_alpha=log:0.1:1"])  # no recipe: no mixup
    with pytest.raises(ConfigError) as err:  # a trial with recipe=light would have no mixup
        parse_space(TrainConfig, ["recipe=light,strong", "mixup_alpha=0.1:1"], fixed=fixed)
    assert str(err.value) == (
        "--space mixup_alpha=0.1:1: mixup_alpha acts only on 'mixup', which the choice "
        "recipe=light leaves out; drop that choice, or fix --recipe to one that has mixup and "
        "search mixup_alpha alone"
    )
    assert parse_space(TrainConfig, ["recipe=standard,strong", "mixup_alpha=0.1:1"], fixed=fixed)


def test_multilabel_data_refuses_mixing_recipes_before_any_trial(tmp_path: Path) -> None:
    """builtin:multishapes is multi-label: recipe standard / strong (MixUp, CutMix) would fail
    every trial that drew them, so the study refuses them up front, naming them."""
    from cnnlab import api

    with pytest.raises(ConfigError) as err:
        api.tune(space=["recipe=none,light,standard,strong"], trials=2, out=tmp_path / "t",
                 data="builtin:multishapes?n=40&size=16")  # fmt: skip
    assert str(err.value) == (
        "--space recipe=none,light,standard,strong: standard, strong mix images (mixup / cutmix), "
        "which multi-label runs do not support yet, and this dataset is multi-label; search "
        "recipe=none,light on it"
    )
    assert not (tmp_path / "t").exists()  # refused before the study was made
    st.check_multilabel_space(  # single-label data: every recipe is fine
        TrainConfig, parse_space(TrainConfig, ["recipe=none,strong"]), {"data": "builtin:digits"}
    )


@pytest.mark.slow  # two tiny trainings: seconds
def test_a_two_trial_study_samples_recipe_and_ema(tmp_path: Path) -> None:
    """Optuna's enqueue_trial fixes what each trial draws: the trials' runs train with them."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from cnnlab import api

    journal = tmp_path / "t" / "study.journal"
    journal.parent.mkdir()
    storage = JournalStorage(JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="r", storage=storage, direction="maximize")
    study.enqueue_trial({"recipe": "strong", "ema": "0.99"})
    study.enqueue_trial({"recipe": "light", "ema": "off"})
    api.tune(
        space=["recipe=none,light,standard,strong", "ema=off,0.99,0.999"], trials=2, study="r",
        storage=str(journal), out=tmp_path / "t", pruner="none", data="builtin:digits",
        epochs=1, batch_size=32, precision="32", report=False, seed=0,
    )  # fmt: skip
    trials = _study(journal, "r").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    configs = [json.loads((Path(t.user_attrs["run_dir"]) / "config.json").read_text())
               for t in trials]  # fmt: skip
    assert [(c["recipe"], c["ema"]) for c in configs] == [("strong", 0.99), ("light", 0.0)]
    run = json.loads((Path(trials[0].user_attrs["run_dir"]) / "run.json").read_text())
    assert "ema" in json.dumps(run)  # the averaged weights were validated beside the raw ones
