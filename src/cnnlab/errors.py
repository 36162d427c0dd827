"""Errors a user can cause. The CLI prints these as one line, without a traceback.

Everything else (a bug in cnnlab, a failed assertion) keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlabError(Exception):
    """Base class for errors caused by input the user gave (paths, options, files)."""

    exit_code = 2


class ConfigError(CnnlabError, ValueError):
    """An option or config key is unknown, missing or contradictory."""


class DataError(CnnlabError):
    """A dataset, file or row cannot be used. Always names the path (and row when there is one)."""

    def __init__(
        self, path: object, reason: str, *, row: int | None = None, index: int | None = None
    ):
        self.path = str(path)
        self.reason = reason
        self.row = row
        self.index = index
        where = self.path if row is None else f"{self.path}, row {row}"
        super().__init__(f"{where}: {reason}")


class CheckpointError(CnnlabError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the model / dataset."""


class WriteError(CnnlabError, OSError):
    """A file could not be written (disk full, I/O error): names the path and the free space.

    Also an OSError, so code that handles I/O failures keeps handling it."""


#: Option names of other toolkits (Keras, Ultralytics, timm, Lightning) -> cnnlab's PyTorch
#: spellings. Spelling distance cannot find these: `learning_rate` was answered "did you mean:
#: erasing_prob, private?".
OPTION_SYNONYMS: dict[str, str] = {
    "learning_rate": "lr",
    "lr0": "lr",
    "imgsz": "image_size",
    "img_size": "image_size",
    "input_size": "image_size",
    "batchsize": "batch_size",
    "bs": "batch_size",
    "num_epochs": "epochs",
    "max_epochs": "epochs",
    "optim": "optimizer",
    "wd": "weight_decay",
    "arch": "model",
    "num_workers": "workers",
    "dataset": "data",
}


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' or '' -- used in every 'unknown X' message.

    An option name of another toolkit (``learning_rate``, ``--imgsz``) comes first with cnnlab's
    own name for it, in the same form (``lr``, ``--image-size``), when that is a choice."""
    choices = list(choices)
    found = []
    synonym = OPTION_SYNONYMS.get(word.lstrip("-").replace("-", "_").lower())
    if synonym is not None:
        flag = "--" + synonym.replace("_", "-")
        found += [c for c in (synonym, flag) if c in choices]
    found += [
        c for c in difflib.get_close_matches(word, choices, n=n, cutoff=0.5) if c not in found
    ]
    found = found[:n]
    return f" (did you mean: {', '.join(found)}?)" if found else ""


def no_such_split(split: str, recorded: Iterable[str]) -> ConfigError:
    """The error for ``--split NAME`` naming a split a run did not record: the close match and
    the splits it has, as a choice of ``--split`` (the run's own splits.json is the list)."""
    have = sorted(recorded)
    return ConfigError(
        f"the run has no {split!r} split{close_matches(split, have)}; it has {have}: "
        f"pass --split {' | '.join(have)}"
    )


def wrong_field_count(
    path: object, n_fields: int, n_header: int, *, row: int, delimiter: str = ","
) -> DataError:
    """The error for a CSV row whose field count is not the header's (a predictions CSV, a
    dataset CSV): usually an unquoted delimiter inside a value (a path with a comma)."""
    return DataError(
        path,
        f"{n_fields} fields but the header has {n_header}; check the delimiter ({delimiter!r}) "
        f"and quoting (a value holding {delimiter!r}, such as a path, goes in double quotes)",
        row=row,
    )


class Interrupted(CnnlabError):
    """Training stopped by Ctrl-C / SIGTERM after saving a resumable checkpoint."""

    exit_code = 130
