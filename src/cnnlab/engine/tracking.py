"""Experiment tracking with MLflow (``--track mlflow``), the same for every task.

What a tracked run logs: its parameters (the resolved config) and data fingerprint, tags (task,
model, data, machine, run folder), every per-epoch metric of metrics.csv (step = epoch), the final
test metrics of test_metrics.json (``test_<name>``, with ``test_<name>_low``/``_high`` for each
interval it recorded), and as artifacts the report, the run's JSON/CSV records and the best
weights. ``mlflow ui`` then shows the runs (docs/experiments.md).

The store: ``--track-uri`` (an MLflow server ``http://host:5000``, or any tracking URI), else a
local one inside the runs folder, nothing to start: ``OUT/mlflow.db`` (SQLite, what MLflow 3
recommends for a local store: its plain file store is deprecated) with artifacts in
``OUT/mlartifacts/``. One experiment per task (``cnnlab-<task>``).

DDP: only rank 0 logs (:func:`cnnlab.engine.assembly.standard_callbacks` builds the tracker there
alone). ``--resume`` continues the same MLflow run: its id is kept in the run folder
(``mlflow.json``). The MLflow run ends FINISHED, KILLED (interrupted, resumable) or, when the
process exits on an error, FAILED. mlflow is imported only here, when a run is tracked (it takes seconds).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from cnnlab.engine.trainer import Callback, Trainer
from cnnlab.errors import ConfigError
from cnnlab.run import write_json
from cnnlab.runs_table import model_label

log = logging.getLogger(__name__)

TRACKING_FILE = "mlflow.json"  # in the run folder: the MLflow run a resume continues
INSTALL = "pip install 'cnnlab[track]'"
#: run-folder files logged as artifacts when present (the report and the run's records)
RECORDS = ("config.json", "run.json", "metrics.csv", "test_metrics.json", "classes.json", "class_balance.json",
           "preprocess.json", "splits.json", "data_scan.json", "data_report.json")  # fmt: skip


def import_mlflow() -> Any:
    """The mlflow module, or a one-line ConfigError saying how to install it."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"--track mlflow needs the mlflow package: {INSTALL}") from None
    return mlflow


def open_store(uri: str, *, option: str = "--track mlflow", hint: str = "") -> Any:
    """An MlflowClient on the store at ``uri``, resolved and opened the way MLflow does (a new
    SQLite store gets its tables), or a one-line ConfigError naming the URI and what MLflow said.
    The families caught are what opening a store raises: MLflow's own refusal (an unsupported
    scheme, its retired file store), a path it cannot create or read (OSError), a database
    driver not installed (ImportError) and a file that is not a database (SQLAlchemyError)."""
    import_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from sqlalchemy.exc import SQLAlchemyError

    try:
        with _quiet_store_setup():
            client = MlflowClient(tracking_uri=uri)
            client.get_experiment_by_name("Default")  # creates a new store's tables
    except (MlflowException, OSError, ImportError, SQLAlchemyError) as err:
        reason = _first_line(err).split(" See https://")[0]  # MLflow's link to its docs
        raise ConfigError(f"{option}: the store {uri} refused: {reason}{hint}") from None
    return client


def check_tracking(cfg: Any) -> None:
    """Before anything is written: mlflow is installed and the store of ``--track-uri`` opens,
    so a wrong URI is one line and no run folder. (The default store, OUT/mlflow.db, is opened
    by the tracker itself: checking it here would create it before the run folder.)"""
    if getattr(cfg, "track", "none") != "mlflow":
        return
    import_mlflow()
    if cfg.track_uri:
        open_store(cfg.track_uri, option="--track-uri", hint=(
            "; --track-uri takes an MLflow server (http://HOST:5000) or a database URI "
            "(sqlite:///PATH/mlflow.db); without it the store is OUT/mlflow.db"))  # fmt: skip


def default_store(out: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the local store inside the runs folder ``out``."""
    root = Path(out).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", (root / "mlartifacts").as_uri()


def data_fingerprint(run_dir: Path) -> str | None:
    """sha256 over the run's exact split sample ids (splits.json) and, for file datasets, the
    pre-flight scan's fingerprint of the files themselves (data_scan.json: relative path, size,
    mtime): two runs with the same value trained and were tested on the same samples."""
    h = hashlib.sha256()
    found = False
    for name, key in (("splits.json", "splits"), ("data_scan.json", "fingerprint")):
        path = run_dir / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            h.update(json.dumps({name: value}, sort_keys=True).encode())
            found = True
    return h.hexdigest() if found else None


def test_metric_values(test: dict[str, Any]) -> dict[str, float]:
    """The scalars of a test_metrics.json as MLflow metrics: top-level numbers and one level of
    named groups (``macro.f1`` -> ``test_macro_f1``), each recorded interval as ``_low``/``_high``.
    Per-class tables, curves and matrices stay in the test_metrics.json artifact."""
    values: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values["test_" + "".join(c if c.isalnum() or c in "_-." else "_" for c in name)] = (
                float(value)
            )

    for key, value in test.items():
        if key == "confidence_intervals" and isinstance(value, dict):
            for name, interval in value.items():
                if isinstance(interval, dict):
                    put(f"{name}_low", interval.get("low"))
                    put(f"{name}_high", interval.get("high"))
        elif isinstance(value, dict) and key not in ("per_class", "pr_curves", "reliability"):
            for name, inner in value.items():
                put(f"{key}_{name}", inner)
        else:
            put(key, value)
    return values


def params_of(cfg: Any) -> dict[str, str]:
    """The resolved config as MLflow parameters (text; tuples comma-joined)."""
    params = {}
    for key, value in cfg.to_dict().items():
        if isinstance(value, (tuple, list)):
            value = ",".join(map(str, value))
        params[key] = str(value)[:6000]  # MLflow's limit on a parameter's value
    return params


class MLflowTracker(Callback):
    """Logs one cnnlab run to one MLflow run (see the module docstring)."""

    def __init__(self, cfg: Any, run_dir: Path, metadata: Any):
        self.mlflow = import_mlflow()
        self.cfg, self.run_dir, self.metadata = cfg, Path(run_dir), metadata
        if cfg.track_uri:
            self.uri, self.artifacts = cfg.track_uri, None
        else:
            self.uri, self.artifacts = default_store(cfg.out)
        self.client = None
        self.run_id: str | None = None

    # the MLflow run ------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        meta = self.metadata()
        task = str(meta.get("task", "classification"))
        record = self.run_dir / TRACKING_FILE
        self.client = open_store(self.uri)
        try:
            previous = json.loads(record.read_text()) if record.is_file() else None
            if previous and previous.get("tracking_uri") == self.uri:  # --resume: the same run
                self.run_id = previous["run_id"]
                self.client.update_run(self.run_id, status="RUNNING")
                logged = self.client.get_run(self.run_id).data.params
            else:
                experiment = self._experiment(f"cnnlab-{task}")
                config = self.cfg.to_dict()
                tags = {
                    "task": task, "model": model_label(config), "data": str(self.cfg.data),
                    "machine": _machine(trainer.device), "cnnlab.run_dir": str(self.run_dir.resolve()),
                }  # fmt: skip
                run = self.client.create_run(experiment, tags=tags, run_name=self.run_dir.name)
                self.run_id, logged = run.info.run_id, {}
                self._log_dataset()
                write_json(record, {"tracking_uri": self.uri, "run_id": self.run_id,
                                    "experiment_id": experiment})  # fmt: skip
            params = params_of(self.cfg) | {"data_fingerprint": str(data_fingerprint(self.run_dir))}
            new = [Param(k, v) for k, v in params.items() if k not in logged]
            # parameters cannot change in MLflow: what a resume changed (epochs, ...) is a tag
            changed = [
                RunTag(f"resumed.{k}", v) for k, v in params.items() if logged.get(k, v) != v
            ]
            self.client.log_batch(self.run_id, params=new, tags=changed)
            done = {int(m.step) for m in self.client.get_metric_history(self.run_id, "train_loss")}
        except MlflowException as err:
            raise ConfigError(
                f"--track mlflow: the store {self.uri} refused: {_first_line(err)}"
            ) from None
        for row in trainer.state.history:  # a resume: epochs the MLflow run does not have yet
            if int(row["epoch"]) not in done:
                self._log_metrics(row, int(row["epoch"]))
        atexit.register(self._abandoned)
        log.info("tracking to MLflow run %s (%s)", self.run_id, self.uri)

    def _log_dataset(self) -> None:
        """The data as an MLflow dataset input: `mlflow ui` shows it in its Dataset column, with
        the fingerprint's first 32 hex digits as its digest (MLflow keeps at most 36)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        fingerprint = data_fingerprint(self.run_dir)
        if fingerprint is None:
            return
        data = str(self.cfg.data)
        dataset = Dataset(data[:500], fingerprint[:32], "cnnlab", json.dumps({"data": data}))
        context = [InputTag("mlflow.data.context", "train")]
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset, tags=context)])

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # the kind makes `mlflow ui` open the experiment on its runs and charts (not GenAI traces)
        kind = {"mlflow.experimentKind": "custom_model_development"}
        return self.client.create_experiment(name, artifact_location=self.artifacts, tags=kind)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self._log_metrics(metrics, int(metrics["epoch"]))

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step)
            for k, v in values.items()
            if k != "epoch" and isinstance(v, (int, float))
        ]
        self.client.log_batch(self.run_id, metrics=batch)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.state.interrupted:  # `--resume` sets it running again
            self._end("KILLED")

    def _end(self, status: str) -> None:
        atexit.unregister(self._abandoned)
        self.client.set_terminated(self.run_id, status=status)

    def _abandoned(self) -> None:
        """At exit, a run neither finished nor interrupted stopped on an error: FAILED, not
        RUNNING for ever in `mlflow ui`."""
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException, OSError):
            self.client.set_terminated(self.run_id, status="FAILED")

    def on_run_end(self, result: Any) -> None:
        """The test metrics (as test_metrics.json recorded them), the report, the records and
        the best weights; then the MLflow run is finished."""
        test_file = self.run_dir / "test_metrics.json"
        if test_file.is_file():
            self._log_metrics(test_metric_values(json.loads(test_file.read_text())), 0)
        for name in RECORDS:
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name), "records")
        report = result.report or self.run_dir / "report.html"
        if report is not None and Path(report).is_file():
            self.client.log_artifact(self.run_id, str(report), "report")
            figures = Path(report).parent / "figures"
            if figures.is_dir():
                self.client.log_artifacts(self.run_id, str(figures), "report/figures")
        weights = _best_weights(self.run_dir)
        if weights is not None:
            self.client.log_artifact(self.run_id, str(weights), "weights")
        self._end("FINISHED")


@contextlib.contextmanager
def _quiet_store_setup() -> Any:
    """MLflow says at INFO level, through its own handler, that it creates a new SQLite store's
    tables; cnnlab shows that only when asked for INFO (`cnnlab -v`)."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _best_weights(run_dir: Path) -> Path | None:
    """best.safetensors, or the newest epoch's weights of a ``--keep last`` run."""
    folder = run_dir / "checkpoints"
    if (folder / "best.safetensors").is_file():
        return folder / "best.safetensors"
    epochs = sorted(folder.glob("epoch-*.safetensors"))
    return epochs[-1] if epochs else None


def _machine(device: Any) -> str:
    from cnnlab.engine.devices import describe_machine, machine_info

    return f"{platform.node()}: {describe_machine(machine_info(device))}"


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
