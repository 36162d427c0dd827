"""The search space of `cnnlab tune`: ``NAME=SPEC`` words (or a TOML file of them) checked against
a task's config class, before any trial runs. Optuna-free and torch-free.

``NAME=log:LOW:HIGH``  log-uniform (float, or int for an integer option)
``NAME=LOW:HIGH``      uniform (float, or int for an integer option)
``NAME=a,b,c``         categorical; for a list option (``augment``) ``crop+flip`` is the list
                       (crop, flip) and ``none`` the empty list; for an option whose config reads
                       0 as off (``ema``) ``off`` (or ``none``, ``0``) is that choice:
                       ``ema=off,0.99,0.999``, ``recipe=none,light,standard,strong``
"""

from __future__ import annotations

import types
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import tomllib

from cnnlab.config import AUGMENT_OPTIONS, augmentations, make_config
from cnnlab.errors import ConfigError, close_matches

#: options a study fixes for every trial: where the runs go, what they learn from and are judged on
NOT_SEARCHABLE = frozenset({"data", "out", "name", "resume", "devices", "monitor", "private"})
#: options whose config reads this value (and None, the default) as "off": the space's choice
#: ``off`` (also spelled none or 0) stands for it, and the default configuration's trial takes it
OFF_VALUES: dict[str, float] = {"ema": 0.0}


@dataclass(frozen=True)
class Param:
    """One searched option: ``kind`` "float" | "int" (``low``..``high``, ``log``) or "categorical"
    (``choices``: the words as given, e.g. "crop+flip")."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def text(self) -> str:
        """The ``NAME=SPEC`` word that gives this parameter."""
        if self.kind == "categorical":
            return f"{self.name}={','.join(map(str, self.choices))}"
        low, high = _number(self.low, self.kind), _number(self.high, self.kind)
        return f"{self.name}={'log:' if self.log else ''}{low}:{high}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "low": self.low, "high": self.high,
                "log": self.log, "choices": list(self.choices)}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Param:
        return cls(d["name"], d["kind"], d.get("low"), d.get("high"), bool(d.get("log")),
                   tuple(d.get("choices") or ()))  # fmt: skip


def _is_off(value: Any) -> bool:
    """ "off", "none", 0 or "0": an OFF_VALUES option's off choice."""
    if isinstance(value, str) and value.strip().lower() in ("off", "none"):
        return True
    try:
        return float(value) == 0.0
    except (TypeError, ValueError):
        return False


def _number(value: float | None, kind: str) -> str:
    return str(int(value)) if kind == "int" and value is not None else f"{value:g}"


def option_value(cls: type, name: str, value: Any) -> Any:
    """A sampled value as the config option takes it: "crop+flip" -> "crop,flip" for list options;
    "off" -> 0 for an option of OFF_VALUES (``ema``)."""
    if name in OFF_VALUES and _is_off(value):
        return OFF_VALUES[name]
    if _is_tuple(get_type_hints(cls)[name]) and isinstance(value, str):
        return "none" if value.strip() in ("", "none") else value.replace("+", ",")
    return value


def choice_of(cls: type, name: str, value: Any) -> Any:
    """A config value in the words of the space ((crop, flip) -> "crop+flip"; () -> "none";
    ema None or 0 -> "off")."""
    if name in OFF_VALUES and (value is None or _is_off(value)):
        return "off"
    if _is_tuple(get_type_hints(cls)[name]):
        return "+".join(value) if value else "none"
    return value


def parse_space(
    cls: type, words: Iterable[str] = (), file: str | Path | None = None, fixed: Any = None
) -> list[Param]:
    """The parameters of ``--space NAME=SPEC`` words and a ``--space-file`` TOML file, each value
    checked by building ``cls`` with it (over the ``fixed`` options): unknown names, impossible
    ranges and bad choices fail here with a one-line ConfigError naming the option."""
    fixed = dict(fixed or {})
    params: list[Param] = []
    for word in words:
        name, sep, spec = str(word).partition("=")
        if not sep or not spec.strip():
            raise ConfigError(
                f"--space {word!r}: give NAME=SPEC, e.g. lr=log:1e-4:1e-1, epochs=3:8 or "
                "model=lenet5,resnet18"
            )
        params.append(_parse(cls, name, spec.strip(), f"--space {word}", fixed))
    if file is not None:
        params += _parse_file(cls, Path(file), fixed)
    seen: set[str] = set()
    for p in params:
        if p.name in seen:
            raise ConfigError(f"--space: option {p.name} is given twice; give it once")
        seen.add(p.name)
    _check_strengths(cls, params, fixed)
    return params


def _check_strengths(cls: type, params: list[Param], fixed: dict[str, Any]) -> None:
    """A searched augmentation strength (``mixup_alpha``, ...) needs its augmentation in every
    trial: a searched ``recipe`` or ``augment`` choice without it would fail that trial's config
    check and stop the study, so such a space fails here, before the first trial."""
    choosers = [p for p in params if p.kind == "categorical" and p.name in ("recipe", "augment")]
    for strength in (p for p in params if p.name in AUGMENT_OPTIONS):
        needs = AUGMENT_OPTIONS[strength.name]
        for chooser in choosers:
            for choice in chooser.choices:
                value = option_value(cls, chooser.name, choice)
                if needs not in augmentations(make_config(cls, **(fixed | {chooser.name: value}))):
                    raise ConfigError(
                        f"--space {strength.text()}: {strength.name} acts only on {needs!r}, which "
                        f"the choice {chooser.name}={choice} leaves out; drop that choice, or fix "
                        f"--{chooser.name} to one that has {needs} and search {strength.name} alone"
                    )


def _parse_file(cls: type, path: Path, fixed: dict[str, Any]) -> list[Param]:
    if not path.is_file():
        raise ConfigError(f"--space-file {path}: not found")
    try:
        table = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"--space-file {path} is not valid TOML: {err}") from None
    table = table.get("space", table)  # the file's top level, or its [space] table
    params = []
    for name, spec in table.items():
        where = f"--space-file {path}, key {name}"
        if isinstance(spec, list):
            items = ["+".join(map(str, c)) if isinstance(c, list) else c for c in spec]
            params.append(_categorical(cls, _field(cls, name, where), items, where, fixed))
        elif isinstance(spec, str):
            params.append(_parse(cls, name, spec, where, fixed))
        else:
            raise ConfigError(
                f'{where}: give a string ("log:1e-4:1e-1", "3:8", "a,b") or a list of choices, '
                f"got {spec!r}"
            )
    return params


def _field(cls: type, name: str, where: str) -> str:
    name = name.strip().replace("-", "_")
    names = [f.name for f in fields(cls)]
    if name not in names:
        raise ConfigError(f"{where}: unknown option {name!r}{close_matches(name, names)}")
    if name in NOT_SEARCHABLE:
        raise ConfigError(
            f"{where}: option {name} is the same for every trial of a study; give it as "
            f"--{name.replace('_', '-')} instead"
        )
    return name


def _parse(cls: type, name: str, spec: str, where: str, fixed: dict[str, Any]) -> Param:
    name = _field(cls, name, where)
    log = spec.startswith("log:")
    body = spec[4:] if log else spec
    if ":" in body and "," not in body:
        kind = _numeric_kind(get_type_hints(cls)[name])
        if kind is None:
            raise ConfigError(
                f"{where}: option {name} is not a number; give its choices as {name}=a,b,c"
            )
        parts = body.split(":")
        try:
            if len(parts) != 2:
                raise ValueError
            low, high = (int(p) if kind == "int" else float(p) for p in parts)
        except ValueError:
            raise ConfigError(
                f"{where}: give {'log:' if log else ''}LOW:HIGH with two "
                f"{'integers' if kind == 'int' else 'numbers'}, got {spec!r}"
            ) from None
        if not low < high:
            raise ConfigError(f"{where}: LOW must be below HIGH, got {low} and {high}")
        if log and low <= 0:
            raise ConfigError(f"{where}: a log range needs LOW > 0, got {low}")
        for value in (low, high):
            _check_value(cls, name, value, where, fixed)
        return Param(name, kind, low, high, log)
    if log:
        raise ConfigError(f"{where}: give log:LOW:HIGH, got {spec!r}")
    return _categorical(cls, name, [c.strip() for c in spec.split(",")], where, fixed)


def _categorical(
    cls: type, name: str, choices: list[Any], where: str, fixed: dict[str, Any]
) -> Param:
    choices = [c for c in choices if c != ""]
    if name in OFF_VALUES:  # one spelling of the off choice, the one the baseline trial takes
        choices = ["off" if _is_off(c) else c for c in choices]
    if len(set(map(str, choices))) < 2:
        raise ConfigError(
            f"{where}: give at least two different choices for {name}, or fix it as "
            f"--{name.replace('_', '-')} VALUE"
        )
    for c in choices:
        _check_value(cls, name, option_value(cls, name, c), where, fixed)
    return Param(name, "categorical", choices=tuple(choices))


def _check_value(cls: type, name: str, value: Any, where: str, fixed: dict[str, Any]) -> None:
    """The config's own checks (types, ranges, allowed words) on one value of the space, and a
    model / encoder / backbone name against the names the task builds from."""
    try:
        make_config(cls, **(fixed | {name: value}))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    known = known_names(cls, name)
    if known is not None and isinstance(value, str) and value not in known:
        from cnnlab.models._timm import is_timm

        if not is_timm(value):  # a timm: name is timm's to check, when the model is built
            raise ConfigError(
                f"{where}: unknown {name} {value!r}{close_matches(value, known)}; choose from "
                f"{', '.join(known)}"
            )


def known_names(cls: type, name: str) -> list[str] | None:
    """The names a task's ``model`` (``encoder``, ``backbone``) option may take, or None for any
    other option. The config holds them as plain strings and the model is built only once a
    trial has read its data, so `--space model=lenet5,resnet1` ran trial 0 and then stopped the
    study at the first trial that drew the typo; checked before the first trial instead."""
    from cnnlab.models import list_models

    task = {
        "TrainConfig": "classification",
        "SegmentConfig": "segmentation",
        "DetectConfig": "detection",
        "VideoConfig": "video-classification",
    }.get(cls.__name__)
    if task is None or name not in ("model", "encoder", "backbone"):
        return None
    if name != "model" or task == "classification":
        return list_models()
    if task == "segmentation":
        from cnnlab.models.segmentation import list_segmentation_models

        return list_segmentation_models()
    if task == "video-classification":  # a 3D model, or any 2D zoo model trained per frame
        return [*list_models(task), *list_models()]
    return list_models(task)


def _numeric_kind(hint: Any) -> str | None:
    """ "int" / "float" for an option that holds a number (``X | None`` and ``float |
    Literal["auto"]`` included), else None."""
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    for option in options:
        if option is bool or get_origin(option) is Literal:
            continue
        if option is int:
            return "int"
        if option is float:
            return "float"
    return None


def _is_tuple(hint: Any) -> bool:
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    return any(get_origin(o) is tuple for o in options)
