"""A study of `cnnlab tune` on Optuna: its storage, sampler and pruner, the trials (each one normal
run of the task's fit shell), several workers sharing one study, resuming a killed one, and the
summary at the end (docs/tune.md).

Trials are chosen on the validation split only: a trial's run skips the fit shell's final test
evaluation (its Plan's ``evaluate`` is replaced by a no-op), so the test split is read once, at the
end, for the top two trials, compared with McNemar's exact test and a paired bootstrap interval.

Several workers (processes, machines) share a study through its storage. A worker asks for a trial
only while fewer than ``trials`` are finished or running; after asking, a trial with ``trials`` or
more live trials numbered below it is surplus and is closed as failed without running (two workers
asked at once), so the study ends with exactly ``trials`` finished (complete + pruned) ones. A
worker that dies (SIGKILL, a lost machine) leaves a RUNNING trial: it is failed by the next worker
that looks, at once on the same machine when its process is gone, elsewhere when its heartbeat is
older than :data:`STALE_S`; another trial then takes its place.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from cnnlab.config import MIXING, augmentations, make_config
from cnnlab.data.sources import load_source
from cnnlab.engine.fit import TaskSpec, fit
from cnnlab.engine.trainer import Callback, NonFiniteLossError
from cnnlab.errors import ConfigError, close_matches
from cnnlab.run import OUTPUT_RECORD, claim_outputs, write_json
from cnnlab.tune.space import Param, choice_of, option_value, parse_space

log = logging.getLogger(__name__)

TASKS = ("classify", "segment", "detect", "video")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S = 20.0  # seconds between a running trial's heartbeats (a user attribute)
STALE_S = 120.0  # a RUNNING trial whose heartbeat is older than this is failed (its worker died)
POLL_S = 5.0  # seconds a worker waits while the other workers run the study's last trials
ALPHA = 0.05  # McNemar's test: p below this calls the top two different
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SETTINGS = "cnnlab"  # the study user attribute holding task, space and fixed options
#: study user attribute ``note:trial-N``: why another worker failed trial N. Optuna's public API
#: sets a trial's own attributes only from the process running it (Trial.set_user_attr)
FAILED_NOTE = "note:trial-"
#: the summary's files in the tune folder (beside the trials' run folders, always new ones, and
#: the default journal, the study's storage: appended to, joined and resumed, never rewritten),
#: claimed there as every output folder is (cnnlab.run.claim_outputs); test/ holds the top two
#: trials' test evaluations
SUMMARY_FILES = ["trials.csv", "importances.json", "best_config.json", "comparison.json", "test/"]


def task_spec(task: str) -> TaskSpec:
    """The fit shell's TaskSpec of a `--task` word."""
    if task == "classify":
        from cnnlab.tasks.classify.train import SPEC
    elif task == "segment":
        from cnnlab.segment import SPEC
    elif task == "detect":
        from cnnlab.detect import SPEC
    elif task == "video":
        from cnnlab.video.train import SPEC
    else:
        raise ConfigError(f"--task {task!r} is unknown{close_matches(task, TASKS)}; choose from "
                          f"{', '.join(TASKS)}")  # fmt: skip
    return SPEC


def _validation_only(spec: TaskSpec, study: str) -> TaskSpec:
    """``spec`` whose runs skip the final test evaluation: trials never read the test split."""

    def prepare(cfg: Any, *args: Any) -> Any:
        # report=False for the task's own preparation only (config.json keeps the trial's
        # config): no report is written, so no report workers are started (cnnlab.report.render)
        plan = spec.prepare(dataclasses.replace(cfg, report=False), *args)
        plan.evaluate = lambda run_dir, device, precision: None
        plan.record = {**plan.record, "tune": {"study": study, "test_split": "not evaluated: "
                       "trials are chosen on validation; the top two are scored at the end"}}  # fmt: skip
        return plan

    return dataclasses.replace(spec, prepare=prepare)


def check_multilabel_space(cls: type, params: list[Param], fixed: dict[str, Any]) -> None:
    """A space that offers mixing augmentations (``recipe`` standard / strong, ``augment`` with
    mixup / cutmix) on a multi-label dataset fails here, before any trial runs, naming the
    choices: multi-label runs refuse mixing (cnnlab.tasks.classify.multilabel.check_options),
    and every trial that drew one would fail. The data is read only when such a choice exists."""

    def mixes(p: Param, choice: Any) -> bool:
        cfg = make_config(cls, **fixed | {p.name: option_value(cls, p.name, choice)})
        return bool(set(augmentations(cfg)) & set(MIXING))

    offered = [(p, [c for c in p.choices if mixes(p, c)]) for p in params
               if p.kind == "categorical" and p.name in ("recipe", "augment")]  # fmt: skip
    offered = [(p, bad) for p, bad in offered if bad]
    if not offered:
        return
    if not load_source(make_config(cls, **fixed)).multilabel:
        return
    p, bad = offered[0]
    rest = [c for c in p.choices if c not in bad]
    instead = (f"search {p.name}={','.join(map(str, rest))} on it" if len(rest) > 1
               else "leave mixup / cutmix out of the space")  # fmt: skip
    raise ConfigError(
        f"--space {p.text()}: {', '.join(map(str, bad))} mix images (mixup / cutmix), which "
        f"multi-label runs do not support yet, and this dataset is multi-label; {instead}"
    )


# -- storage and settings ---------------------------------------------------------------------------
def open_storage(url: str | None, folder: Path) -> tuple[Any, str]:
    """(Optuna storage, its description): a journal file (default ``folder/study.journal``; safe
    for several processes and for NFS) or an RDB URL (``postgresql://``, ``mysql://``,
    ``sqlite:///``)."""
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    if url is None or "://" not in url:
        path = Path(url) if url else folder / "study.journal"
        if path.is_dir():
            raise ConfigError(f"--storage {path} is a folder; give a journal file or an RDB URL")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path))), str(path)
    if url.startswith("redis"):
        raise ConfigError(
            f"--storage {url}: Redis is not supported; give a journal file (shared folder) or an "
            "RDB URL (postgresql://, mysql://, sqlite:///)"
        )
    try:
        return RDBStorage(url), url
    except ImportError as err:  # the database's driver (psycopg2, pymysql, ...) is not installed
        raise ConfigError(f"--storage {url}: {err}; install the database driver") from None
    except Exception as err:  # SQLAlchemy's errors for a bad URL or an unreachable server
        if type(err).__module__.startswith(("sqlalchemy", "optuna")) or isinstance(err, ValueError):
            raise ConfigError(f"--storage {url}: {str(err).splitlines()[0]}") from None
        raise


def _settings(
    study: optuna.Study, task: str, params: list[Param], fixed: dict[str, Any], cls: type
) -> tuple[str, list[Param], dict[str, Any]]:
    """The study's task, space and fixed options: recorded by its first worker; a later worker
    (or a resumed one) gives the same or nothing (then it joins the recorded study as it is)."""
    recorded = study.user_attrs.get(SETTINGS)
    mine = {"task": task, "space": [p.to_dict() for p in params], "fixed": fixed}
    if recorded is None:
        if not params:
            raise ConfigError(
                f"study {study.study_name} is new: give its search space with --space NAME=SPEC "
                "or --space-file FILE (e.g. --space lr=log:1e-4:1e-1)"
            )
        study.set_user_attr(SETTINGS, mine)
        recorded = study.user_attrs.get(SETTINGS, mine)  # two workers at once: the last one wins
        if recorded == mine:
            return task, params, fixed
    given = bool(params) or bool(fixed)
    same = (
        recorded["task"] == task
        and recorded["space"] == mine["space"]
        and (_resolved(cls, recorded["fixed"]) == _resolved(cls, fixed))
    )
    if given and not same:
        space = " ".join(f"--space {Param.from_dict(p).text()}" for p in recorded["space"])
        raise ConfigError(
            f"study {study.study_name} was made with --task {recorded['task']} {space} and other "
            "options; give the same ones (or none, to join it as it is), or name a new --study"
        )
    return recorded["task"], [Param.from_dict(p) for p in recorded["space"]], recorded["fixed"]


def _resolved(cls: type, fixed: dict[str, Any]) -> dict[str, Any]:
    d = make_config(cls, **fixed).to_dict()
    return {k: v for k, v in d.items() if k not in ("out", "name", "resume")}


# -- sampling and pruning ---------------------------------------------------------------------------
def distribution(p: Param) -> optuna.distributions.BaseDistribution:
    if p.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(list(p.choices))
    if p.kind == "int":
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.log)
    return optuna.distributions.FloatDistribution(float(p.low), float(p.high), log=p.log)


class Sampler(optuna.samplers.BaseSampler):
    """TPE with two additions. Trial 0 takes the default configuration's value of every searched
    option that lies in the space (the baseline the study must beat). Each trial's TPE is seeded
    by (seed, trial number): one worker's study is reproducible, and two workers never draw the
    same random start-up trials."""

    def __init__(self, seed: int, startup: int, baseline: dict[str, Any]):
        self.seed, self.startup, self.baseline = seed, startup, baseline
        self._tpe: dict[int, optuna.samplers.TPESampler] = {}

    def _for(self, trial: FrozenTrial) -> optuna.samplers.TPESampler:
        if trial.number not in self._tpe:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._tpe = {trial.number: optuna.samplers.TPESampler(
                    seed=(self.seed * 100_003 + trial.number) % 2**32,
                    n_startup_trials=self.startup, constant_liar=True,
                )}  # fmt: skip
        return self._tpe[trial.number]

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, space: dict) -> dict:
        if trial.number == 0 and self.baseline:
            return {}
        return self._for(trial).sample_relative(study, trial, space)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, name: str, dist: Any
    ) -> Any:
        if trial.number == 0 and name in self.baseline:
            return self.baseline[name]
        return self._for(trial).sample_independent(study, trial, name, dist)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def after_trial(
        self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any
    ) -> None:
        self._for(trial).after_trial(study, trial, state, values)


def baseline(cls: type, params: list[Param], fixed: dict[str, Any]) -> dict[str, Any]:
    """The default configuration's value of each searched option that lies in the space."""
    defaults = make_config(cls, **fixed).to_dict()
    found = {}
    for p in params:
        value = choice_of(cls, p.name, defaults[p.name])
        if p.kind == "categorical":
            match = [c for c in p.choices if str(c) == str(value)]
            if match:
                found[p.name] = match[0]
        elif isinstance(value, (int, float)) and p.low <= value <= p.high:
            found[p.name] = int(value) if p.kind == "int" else float(value)
    return found


def make_pruner(name: str, epochs: int, trials: int) -> optuna.pruners.BasePruner:
    """median: stop a trial whose monitored value at an epoch is worse than the median of the
    earlier trials at that epoch (after a few complete trials); hyperband: successive halving in
    brackets over 1..epochs epochs; none: every trial runs all its epochs."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, trials // 4)))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r} is unknown{close_matches(name, PRUNERS)}; choose from "
                      f"{', '.join(PRUNERS)}")  # fmt: skip


class PruneTrial(Callback):
    """The tuner's epoch callback: reports the monitored validation value of every epoch to the
    trial and stops the run (a flag, with its reason in run.json) when the pruner says so."""

    def __init__(self, trial: optuna.Trial, monitor: str, pruner: str):
        self.trial, self.monitor, self.pruner = trial, monitor, pruner
        self.pruned = False

    def on_epoch_end(self, trainer: Any, metrics: dict[str, float]) -> None:
        value = metrics.get(self.monitor)
        if value is None:
            raise ConfigError(
                f"cnnlab tune chooses trials on the validation split, but this run records no "
                f"{self.monitor}; give the data a validation split (--val-fraction > 0)"
            )
        epoch = int(metrics["epoch"])
        if math.isfinite(value):
            self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.state.stop = True
            trainer.state.stop_reason = (
                f"pruned by cnnlab tune ({self.pruner} pruner): {self.monitor} {value:.4f} at "
                f"epoch {epoch} (trial {self.trial.number})"
            )


class Heartbeat:
    """A thread that stamps the trial's ``heartbeat`` user attribute every HEARTBEAT_S seconds:
    how another worker on another machine tells a live trial from a dead worker's."""

    def __init__(self, trial: optuna.Trial):
        self.trial, self.stop = trial, threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        while True:
            try:
                self.trial.set_user_attr("heartbeat", time.time())
            except Exception as err:  # a storage hiccup must not kill the trial it watches
                log.warning("tune: heartbeat of trial %d not written: %s", self.trial.number, err)
            if self.stop.wait(HEARTBEAT_S):
                return

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


# -- the workers' loop ------------------------------------------------------------------------------
def machine_id() -> str:
    """This machine's name and boot: pids are compared only on the same machine and boot."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()[:8]
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that pid
        return True
    return True


def stale_reason(t: FrozenTrial, now: float, machine: str) -> str | None:
    """Why a RUNNING trial is dead (its worker's process is gone, or its heartbeat is old)."""
    a = t.user_attrs
    if a.get("machine") == machine and a.get("pid") and not _alive(int(a["pid"])):
        return f"its worker (pid {a['pid']} on {machine.split('/')[0]}) stopped"
    beat = a.get("heartbeat")
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    if beat is not None and now - float(beat) > STALE_S:
        return f"no heartbeat from its worker for {now - float(beat):.0f} s"
    return None


def fail_stale(study: optuna.Study, machine: str) -> list[int]:
    """Fail the RUNNING trials of dead workers; the numbers failed."""
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = stale_reason(t, time.time(), machine)
        if reason is None:
            continue
        try:
            study.set_user_attr(f"{FAILED_NOTE}{t.number}", f"failed: {reason}")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(t.number)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError, ValueError):
            pass  # another worker failed it first
    return failed


def trial_note(t: FrozenTrial, study_attrs: dict[str, Any]) -> str:
    """What befell a trial: its own note (pruned, stopped, failed in its worker), else the note
    of the worker that failed it as stale (``study_attrs``: the study's user attributes)."""
    return t.user_attrs.get("note") or study_attrs.get(f"{FAILED_NOTE}{t.number}", "")


def next_trial(study: optuna.Study, n: int, space: dict[str, Any], ctx: Context) -> Any:
    """A trial to run, or None once ``n`` trials are finished. Waits while the other workers run
    the last ones (they may still fail, and another trial would then take their place)."""
    waiting = False
    while True:
        for number in fail_stale(study, ctx.machine):
            ctx.say(f"trial {number} failed: its worker is gone; another trial takes its place")
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        if done >= n:
            return None
        if done + running >= n:
            if not waiting:
                ctx.say(f"{running} trial(s) running in other workers; waiting for them")
                waiting = True
            time.sleep(POLL_S)
            continue
        trial = study.ask(space)
        trial.set_user_attr("machine", ctx.machine)
        trial.set_user_attr("pid", os.getpid())
        if claim(study, trial, n):
            return trial


def claim(study: optuna.Study, trial: optuna.Trial, n: int) -> bool:
    """True when fewer than ``n`` live (finished or running) trials are numbered below ``trial``;
    else ``trial`` is surplus (another worker took the last place first) and is closed as a failed
    trial that never ran. Trial numbers follow the storage's order of creation, so of any workers
    that asked at once exactly the first ones keep their trials."""
    live = (*FINISHED, TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False)
    ahead = sum(t.number < trial.number and t.state in live for t in trials)
    if ahead < n:
        return True
    trial.set_user_attr("surplus", True)
    study.tell(trial, state=TrialState.FAIL)
    return False


@dataclasses.dataclass
class Context:
    """What every trial of one worker shares."""

    spec: TaskSpec
    cls: type
    fixed: dict[str, Any]
    folder: Path
    monitor: str
    pruner: str
    machine: str
    trials: int
    console: Any = None
    claim: dict[str, Any] = dataclasses.field(default_factory=dict)  # claim_outputs' options

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            log.info("tune: %s", text)


def run_trial(study: optuna.Study, trial: optuna.Trial, ctx: Context) -> None:
    """One trial: a normal run folder ``trial-NNN`` in the tune folder, pruned through the fit
    shell's epoch callbacks; its value is the best validation ``monitor`` over its epochs."""
    options = ctx.fixed | {k: option_value(ctx.cls, k, v) for k, v in trial.params.items()}
    name = f"trial-{trial.number:03d}"
    options |= {"out": str(ctx.folder), "name": name}
    trial.set_user_attr("run_dir", str((ctx.folder / name).resolve()))
    pruning = PruneTrial(trial, ctx.monitor, ctx.pruner)
    words = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in trial.params.items())  # fmt: skip
    t0 = time.time()
    try:
        with Heartbeat(trial):
            result = fit(ctx.spec, None, console=None, callbacks=[pruning], **options)
    except (
        NonFiniteLossError
    ) as err:  # a diverging configuration: a failed trial, not a failed study
        trial.set_user_attr("note", f"failed: {err}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        ctx.say(f"trial {trial.number}  {words}  failed: the loss diverged")
        return
    except BaseException as err:  # Ctrl-C, a user error, a bug: the trial fails, the study stops
        trial.set_user_attr("note", f"failed: {type(err).__name__}: {str(err)[:200]}")
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    seconds = time.time() - t0
    values = [h[ctx.monitor] for h in result.history if math.isfinite(h.get(ctx.monitor, math.nan))]
    trial.set_user_attr("run_dir", str(Path(result.run_dir).resolve()))
    trial.set_user_attr("epochs", len(result.history))
    trial.set_user_attr("seconds", round(seconds, 1))
    if result.stop_reason:
        trial.set_user_attr("note", result.stop_reason)
    if not values:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        ctx.say(f"trial {trial.number}  {words}  failed: no finite {ctx.monitor}")
        return
    best = min(values) if ctx.monitor.endswith("loss") else max(values)
    if pruning.pruned:
        study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        state = f"pruned after {len(result.history)} epoch(s)"
    else:
        study.tell(trial, best, skip_if_finished=True)
        state = f"complete, {len(result.history)} epoch(s)"
    ctx.say(f"trial {trial.number}  {words}  {ctx.monitor} {best:.4f}  {state}  ({seconds:.0f} s)")


# -- the command ------------------------------------------------------------------------------------
def tune(
    *,
    space: Sequence[str] = (),
    space_file: str | Path | None = None,
    trials: int = 20,
    study: str | None = None,
    storage: str | None = None,
    pruner: str = "median",
    task: str = "classify",
    out: str | Path | None = None,
    config: str | Path | None = None,
    console: Any = None,
    **options: Any,
) -> dict[str, Any]:
    """Run, join or resume the study ``study`` until it has ``trials`` finished trials, then sum it
    up (see :func:`summarize`). ``options`` (and the ``config`` file) fix the other options of
    every trial's run; ``space`` / ``space_file`` give the searched ones (cnnlab.tune.space)."""
    from cnnlab.config import load_config_file

    if int(trials) < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    for key in ("out", "name", "resume"):
        if options.get(key) is not None:
            raise ConfigError(f"cnnlab tune names every trial's run folder: leave --{key} out")
    if int(options.get("devices") or 1) > 1:
        raise ConfigError(
            "cnnlab tune runs each trial in one process: leave --devices out and start several "
            "workers on one --storage instead"
        )
    spec = task_spec(task)
    cls = spec.config
    fixed = (load_config_file(config) if config else {}) | {
        k: v for k, v in options.items() if v is not None
    }
    for key in ("out", "name", "resume"):
        fixed.pop(key, None)
    make_config(cls, **fixed)  # unknown or bad fixed options fail before anything is written
    params = parse_space(cls, space, space_file, fixed)
    if task == "classify":
        check_multilabel_space(cls, params, fixed)
    name = study or "default"
    folder = Path(out) if out is not None else Path("runs") / f"tune-{name}"
    claim = {"command": "tune", "default": out is None, "adopt": _earlier_tune(folder)}
    # said before the first trial trains; recorded just before the summary is written
    claim_outputs(folder, SUMMARY_FILES, record=False, **claim)
    folder.mkdir(parents=True, exist_ok=True)
    store, where = open_storage(storage, folder)
    base = make_config(cls, **fixed)
    direction = "minimize" if base.monitor.endswith("loss") else "maximize"
    with optuna_warnings_only():  # the caller's Optuna verbosity comes back after
        try:
            existing = optuna.load_study(study_name=name, storage=store)
            recorded = existing.user_attrs.get(SETTINGS, {})
        except KeyError:
            recorded = {}
        if recorded and not params and not fixed:  # join: the study's own space and options
            fixed = recorded["fixed"]
            params = [Param.from_dict(p) for p in recorded["space"]]
            if recorded["task"] != task:
                spec = task_spec(recorded["task"])
                cls = spec.config
            base = make_config(cls, **fixed)
            direction = "minimize" if base.monitor.endswith("loss") else "maximize"
        sampler = Sampler(
            base.seed, max(3, min(10, int(trials) // 3)), baseline(cls, params, fixed)
        )
        the_study = optuna.create_study(
            study_name=name, storage=store, sampler=sampler, direction=direction,
            pruner=make_pruner(pruner, base.epochs, int(trials)), load_if_exists=True,
        )  # fmt: skip
        task, params, fixed = _settings(the_study, task, params, fixed, cls)
        ctx = Context(
            _validation_only(spec, name), cls, fixed, folder, base.monitor, pruner, machine_id(),
            int(trials), console, claim,
        )  # fmt: skip
        distributions = {p.name: distribution(p) for p in params}
        done = sum(t.state in FINISHED for t in the_study.get_trials(deepcopy=False))
        if done:
            ctx.say(f"study {name}: {done} finished trial(s) kept ({where})")
        while (trial := next_trial(the_study, int(trials), distributions, ctx)) is not None:
            run_trial(the_study, trial, ctx)
        with _lock(folder):  # several workers on one tune folder: one summary at a time
            return summarize(the_study, ctx, params, where)


def _earlier_tune(folder: Path) -> bool:
    """Whether ``folder`` holds a tune summary from before output folders kept their record (a
    trials.csv with tune's columns, no .cnnlab-output.json): cnnlab's own files, replaced by the
    next summary (resuming or joining such a study was refused otherwise)."""
    path = folder / "trials.csv"
    if os.path.lexists(folder / OUTPUT_RECORD) or not path.is_file():
        return False
    try:
        with open(path, newline="") as f:
            header = f.readline()
    except (OSError, UnicodeDecodeError):  # unreadable: not a summary of cnnlab's
        return False
    return header.startswith("trial,state,")


@contextlib.contextmanager
def optuna_warnings_only() -> Iterator[None]:
    """Optuna's own INFO lines (each trial finished, ...) hidden while a study runs: cnnlab says
    what happened in its words. Optuna's verbosity belongs to the process, so it is put back."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


class _lock:
    """An exclusive lock on ``folder/.summary.lock`` (works across processes; flock)."""

    def __init__(self, folder: Path):
        self.path = folder / ".summary.lock"

    def __enter__(self) -> None:
        self.f = open(self.path, "w")
        fcntl.flock(self.f, fcntl.LOCK_EX)

    def __exit__(self, *exc: Any) -> None:
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


# -- the summary ------------------------------------------------------------------------------------
def trial_rows(study: optuna.Study, params: list[Param], monitor: str) -> list[dict[str, Any]]:
    """One row per trial that ran (surplus trials, which never ran, left out); a pruned trial's
    value is the best it reported before it was stopped."""
    pick = min if monitor.endswith("loss") else max
    rows = []
    study_attrs = study.user_attrs
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if a.get("surplus"):
            continue
        value = t.value
        if t.state == TrialState.PRUNED and t.intermediate_values:
            value = pick(t.intermediate_values.values())
        rows.append({
            "trial": t.number, "state": t.state.name.lower(), "value": value,
            "epochs": a.get("epochs"), **{p.name: t.params.get(p.name) for p in params},
            "seconds": a.get("seconds"), "run_dir": a.get("run_dir"), "note": trial_note(t, study_attrs),
        })  # fmt: skip
    return rows


def importances(study: optuna.Study) -> tuple[dict[str, float], str | None]:
    """fANOVA importances of the searched options over the complete trials (seeded), or a note
    saying why there are none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, "parameter importances need two or more complete trials"
    try:
        from optuna.importance import FanovaImportanceEvaluator, get_param_importances

        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    except (ValueError, RuntimeError) as err:
        return {}, f"no parameter importances: {err}"
    return {k: float(v) for k, v in found.items()}, None


def summarize(study: optuna.Study, ctx: Context, params: list[Param], where: str) -> dict[str, Any]:
    """The trials table (trials.csv), importances (importances.json), the best configuration as a
    config file (best_config.json: ``cnnlab train --config`` reruns it) and the top two complete
    trials compared on the test split (comparison.json)."""
    folder = ctx.folder
    claim_outputs(folder, SUMMARY_FILES, **(ctx.claim or {"command": "tune"}))
    rows = trial_rows(study, params, ctx.monitor)
    columns = ["trial", "state", ctx.monitor, "epochs", *(p.name for p in params), "seconds",
               "run_dir", "note"]  # fmt: skip
    with open(folder / "trials.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([r["trial"], r["state"], r["value"], r["epochs"],
                        *(r[p.name] for p in params), r["seconds"], r["run_dir"], r["note"]])  # fmt: skip
    scores, note = importances(study)
    write_json(folder / "importances.json", scores)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None]  # fmt: skip
    ranked = sorted(complete, key=lambda t: t.value, reverse=not ctx.monitor.endswith("loss"))
    result: dict[str, Any] = {
        "study": study.study_name, "storage": where, "folder": str(folder),
        "monitor": ctx.monitor, "trials": rows, "columns": columns, "params": [p.name for p in params],
        "trials_csv": str(folder / "trials.csv"), "importances": scores, "notes": [],
        "best": None, "best_config": None, "command": None, "comparison": None,
    }  # fmt: skip
    if note:
        result["notes"].append(note)
    if not ranked:
        result["notes"].append("no complete trial: no best configuration")
        return result
    best = ranked[0]
    values = ctx.fixed | {k: option_value(ctx.cls, k, v) for k, v in best.params.items()}
    config = {k: v for k, v in make_config(ctx.cls, **values).to_dict().items()
              if k not in ("out", "name", "resume")}  # fmt: skip
    write_json(folder / "best_config.json", config)
    result["best"] = {"trial": best.number, "value": best.value, "params": best.params,
                      "run_dir": best.user_attrs.get("run_dir")}  # fmt: skip
    result["best_config"] = str(folder / "best_config.json")
    result["command"] = f"{ctx.spec.command} --config {folder / 'best_config.json'}"
    if len(ranked) < 2:
        result["notes"].append("one complete trial: no test comparison of the top two")
        return result
    result["comparison"] = compare_top_two(ranked[0], ranked[1], ctx, result["notes"])
    if result["comparison"] is not None:
        write_json(folder / "comparison.json", result["comparison"])
    return result


def compare_top_two(
    a: FrozenTrial, b: FrozenTrial, ctx: Context, notes: list[str]
) -> dict[str, Any] | None:
    """The two best complete trials (by validation) scored once on the test split, then McNemar's
    exact test and a paired bootstrap interval of the accuracy difference (`cnnlab compare`)."""
    from cnnlab.tasks.classify.evaluate import compare
    from cnnlab.tasks.registry import get_task

    outs = []
    for t in (a, b):
        run_dir = Path(t.user_attrs.get("run_dir", ""))
        if not (run_dir / "checkpoints").is_dir():
            notes.append(
                f"trial {t.number}'s run folder {run_dir} is not on this machine: no test comparison "
                "(run `cnnlab tune` with the same --study and --storage where both folders are)"
            )
            return None
        target = ctx.folder / "test" / f"trial-{t.number:03d}"
        if not target.is_dir():  # scored once, kept for later summaries
            partial = target.with_name(target.name + ".partial")
            if partial.exists():
                import shutil

                shutil.rmtree(partial)
            get_task(ctx.spec.name).evaluate(run_dir, split="test", report=False, out=partial)
            partial.rename(target)
        outs.append(target)
    if not all((o / "test_predictions.npz").is_file() for o in outs):
        notes.append(
            f"a {ctx.spec.name} run records no per-sample test predictions, so the top two have "
            f"no paired test (classification and video runs have); their test metrics are in "
            f"{outs[0]} and {outs[1]}"
        )
        return None
    r = compare(outs[0], outs[1])
    p = r["mcnemar"]["p_value"]
    low, high = r["difference_low"], r["difference_high"]
    if p < ALPHA:
        winner, loser = (a, b) if r["difference"] > 0 else (b, a)
        verdict = (f"trial {winner.number} is significantly better than trial {loser.number} on the "
                   f"test split (McNemar p = {p:.3g} < {ALPHA})")  # fmt: skip
    else:
        verdict = (f"a tie: trials {a.number} and {b.number} do not differ significantly on the test "
                   f"split (McNemar p = {p:.3g} >= {ALPHA}; the difference's 95% interval "
                   f"[{low:+.4f}, {high:+.4f}])")  # fmt: skip
    return r | {"trial_a": a.number, "trial_b": b.number, "alpha": ALPHA,
                "significant": p < ALPHA, "verdict": verdict}  # fmt: skip
