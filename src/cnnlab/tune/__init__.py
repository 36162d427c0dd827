"""`cnnlab tune`: hyperparameter search on Optuna for any task's training (docs/tune.md).

:mod:`cnnlab.tune.space` parses the search space (no Optuna, no torch); :mod:`cnnlab.tune.study`
runs the trials (TPE, pruning through the fit shell's epoch callbacks, a study shared by several
workers) and sums the study up (table, importances, best config, the top two on the test split).
"""

from __future__ import annotations

from typing import Any

from cnnlab.errors import ConfigError


def tune(**kwargs: Any) -> dict[str, Any]:
    """Run (or join, or resume) a study and sum it up: see :func:`cnnlab.tune.study.tune`."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ConfigError("cnnlab tune needs Optuna: pip install 'cnnlab[tune]'") from None
    from cnnlab.tune.study import tune as run

    return run(**kwargs)
