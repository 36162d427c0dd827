"""Typed, frozen configuration: the only place defaults live.

Merge order is visible and fixed: dataclass defaults < config file (JSON or TOML) < keyword arguments / command line.
Unknown keys fail with a close-match suggestion; values are checked once, here, before any work starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import types
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import tomllib

from cnnlab.errors import ConfigError, close_matches

Precision = Literal["auto", "32", "bf16", "16"]
Device = Literal["auto", "cpu", "cuda", "mps"]
Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["onecycle", "cosine", "constant"]
ResizeMode = Literal["fit", "crop", "stretch"]
Strategy = Literal["full", "linear-probe", "fine-tune", "gradual"]
LoaderMode = Literal["auto", "memory", "stream"]
Keep = Literal["best", "last", "all"]
Track = Literal["none", "mlflow"]
Sampler = Literal["none", "balanced"]
Loss = Literal["ce", "focal"]
#: --augment names. crop, flip, affine: cnnlab.data.loader; the rest: cnnlab.data.augment
#: (torchvision transforms.v2 on whole batches; docs/recipes.md)
AUGMENTATIONS = (
    "crop", "flip", "affine",
    "trivialaugment", "randaugment", "autoaugment", "jitter", "erasing", "mixup", "cutmix",
)  # fmt: skip
#: augmentations that mix two images and their labels (classification's soft targets only)
MIXING = ("mixup", "cutmix")
RecipeName = Literal["none", "light", "standard", "strong"]
#: --recipe NAME: a named list of --augment names (docs/recipes.md has the table). None holds
#: flip: mirroring changes what digits and text mean, so photos add it with --augment flip.
RECIPES: dict[str, tuple[str, ...]] = {
    "none": (),
    "light": ("crop", "trivialaugment"),
    "standard": ("crop", "trivialaugment", "erasing", "mixup"),
    "strong": ("crop", "randaugment", "jitter", "erasing", "mixup", "cutmix"),
}

#: 50 megapixels: an 8000 x 6000 photo still passes, a 12000 x 9000 one does not (its RGB decode
#: alone would take 324 MB). Raise with ``--max-image-pixels``; enforced in cnnlab.data.decode.
DEFAULT_MAX_PIXELS = 50_000_000

# Smallest image side any registered model accepts: every family is tested at 28 px and runs
# down to 16 px (LeNet's two 5x5 convs + two 2x2 pools need >= 12 px even with padding). Here,
# below the models, so that a config refuses a smaller --image-size with the models' own minimum.
MIN_IMAGE_SIZE = 16
#: the seed reaches NumPy and scikit-learn, which take 0 .. 2**32 - 1 only
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class RunConfig:
    """What every task's run shares (classification, segmentation, detection, video): data split,
    optimisation, compute and run control -- the options of the one fit shell
    (:func:`cnnlab.engine.fit.fit`). Each task's config adds its own fields and re-declares only the
    defaults it changes; saved as `config.json` in the run folder (enough to rerun it)."""

    # --- data ---
    data: str = "builtin:mnist-sample"  # folder | CSV | builtin:NAME | torchvision:NAME | ...
    image_size: int | None = None  # pixels (square); None: the source's own size (task rules)
    resize: ResizeMode = (
        "fit"  # fit: keep aspect and pad; crop: centre crop; stretch: ignore aspect
    )
    val_fraction: float = (
        0.1  # of all samples, when the source has no val split (stratified, seeded)
    )
    test_fraction: float = 0.1  # of all samples, when the source has no test split
    # comma-separated: crop, flip, affine, trivialaugment, randaugment, autoaugment, jitter,
    # erasing, mixup, cutmix; or none (docs/recipes.md)
    augment: tuple[str, ...] = ("crop",)
    # --- model ---
    model: str = "lenet5"  # a zoo name: `cnnlab models` lists them
    # --- optimisation ---
    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # samples per forward/backward (global over all processes under DDP)
    # micro-batches whose gradients add up before one optimizer step (Lightning's name): effective
    # batch = batch_size x accumulate_grad_batches, for batches too big for memory; lr and schedule
    # are per optimizer step
    accumulate_grad_batches: int = 1
    optimizer: Optimizer = "sgd"  # sgd (with momentum) or adamw
    lr: float | Literal["auto"] = 0.05  # peak rate per optimizer step; "auto": lr-find picks it
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    nesterov: bool = True  # Nesterov momentum (SGD only)
    weight_decay: float = 5e-4  # decoupled for AdamW, L2 for SGD; never applied to norms and biases
    schedule: Schedule = "onecycle"  # learning-rate shape over the run (stepped per optimizer step)
    warmup_epochs: float = 1.0  # for cosine; one-cycle warms up for 25% of the run
    grad_clip: float | None = None  # max global L2 norm of gradients
    # exponential moving average of the weights, decay per optimizer step in (0, 1) (e.g. 0.999);
    # validated beside the raw weights, the better of the two is kept as best; 0 or none: off
    ema: float | None = None
    # --- compute ---
    device: Device = "auto"  # auto: CUDA when a GPU is visible, else the CPU
    precision: Precision = "auto"  # auto: bf16 autocast where the CPU/GPU supports it, else fp32
    channels_last: bool | None = (
        None  # None: NHWC on CPU and CUDA (engine.devices.resolve_channels_last)
    )
    # torch.compile the model: true | false | auto (a timed probe on the first batch decides and
    # run.json records it; cnnlab.engine.compile_probe)
    compile: bool | Literal["auto"] = False
    devices: int = (
        1  # processes on this node (DDP through torchrun; --batch-size stays the global batch)
    )
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    # --- run control ---
    seed: int = 0  # seeds the split, initialisation, augmentation and batch order
    deterministic: bool = (
        False  # torch deterministic algorithms; identical runs for the same seed and versions
    )
    early_stopping: int | None = None  # patience in epochs on `monitor`; None: never stop early
    monitor: str = "val_accuracy"  # any val_<metric> the task validates, or val_loss / train_loss
    out: str = "runs"  # folder that holds the run folders
    name: str | None = None  # run folder name under `out`; None: model-data-timestamp
    resume: str | None = (
        None  # "auto" (--out/--name's last verified checkpoint) or a run / checkpoint
    )
    tensorboard: bool = (
        False  # per-epoch metrics to RUN/tensorboard (needs the tensorboard package)
    )
    report: bool = True  # write report.html at the end
    track: Track = (
        "none"  # none | mlflow: log params, metrics, report, weights (docs/experiments.md)
    )
    track_uri: str | None = (
        None  # MLflow tracking URI; None: sqlite OUT/mlflow.db (needs --track mlflow)
    )
    keep: Keep = (
        "best"  # checkpoints kept: best (+ the last epoch's, resumable) | last | all epochs
    )
    private: bool = False  # run folder 0700 and its files 0600 (default: as open() under the umask)

    #: the smallest image_size the task's models take (pixels); a task raises it where its models
    #: need more (detection's FPN)
    min_image_size: ClassVar[int] = MIN_IMAGE_SIZE

    def __post_init__(self) -> None:
        """The checks every task shares; a task's config calls this first, then checks its own."""
        check_literals(self)
        if isinstance(self.lr, str) and self.lr != "auto":
            raise ConfigError(f"option lr must be a number or 'auto', got {self.lr!r}")
        if self.compile not in (True, False, "auto"):
            raise ConfigError(f"option compile must be true, false or auto, got {self.compile!r}")
        check_positive(self, "epochs", "batch_size", "accumulate_grad_batches", "devices")
        if not isinstance(self.lr, str):
            check_positive(self, "lr")
        # a negative clip norm flips every gradient (the loss rises), 0 zeroes them: none is off
        if self.grad_clip is not None and not (
            self.grad_clip > 0 and math.isfinite(self.grad_clip)
        ):
            raise ConfigError(
                f"option grad_clip must be > 0 (a gradient norm; none: no clipping), "
                f"got {self.grad_clip}"
            )
        if not 0.0 <= self.momentum < 1.0:  # 1 never forgets a gradient; above it diverges
            raise ConfigError(f"option momentum must be in [0, 1), got {self.momentum}")
        check_non_negative(self, "weight_decay", "warmup_epochs")
        if self.early_stopping is not None and self.early_stopping < 0:
            raise ConfigError(
                "option early_stopping must be >= 0 epochs of patience (0 or none: never stop "
                f"early), got {self.early_stopping}"
            )
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"option seed must be in 0..{MAX_SEED}, got {self.seed}")
        if self.image_size is not None and self.image_size < self.min_image_size:
            raise ConfigError(
                f"option image_size must be >= {self.min_image_size} pixels (the smallest side "
                f"the models take), got {self.image_size}"
            )
        check_run_name(self.name, self.out)
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"option {key} must be in [0, 1), got {value}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"option val_fraction {self.val_fraction:g} + option test_fraction "
                f"{self.test_fraction:g} must be below 1 to leave samples for training"
            )
        if self.ema is not None and self.ema != 0 and not 0.0 < self.ema < 1.0:
            raise ConfigError(
                f"option ema must be a decay in (0, 1), e.g. 0.999 (0 or none: off), got {self.ema}"
            )
        if self.track_uri is not None and self.track == "none":
            raise ConfigError(
                f"option track_uri={self.track_uri!r} is for a tracker; add --track mlflow"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainConfig(RunConfig):
    """A classification run (`cnnlab train`): RunConfig plus data loading, transfer learning and
    label smoothing."""

    # --- data ---
    data_root: str | None = None  # where torchvision datasets live / are downloaded to
    split_file: str | None = None  # JSON of sample ids per split (e.g. a splits.json)
    in_channels: int | None = None  # None: 1 for grayscale datasets, 3 otherwise
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit, enforced as an error
    max_bad_fraction: float = 0.1  # abort when more of the files than this cannot be decoded
    # memory: decode once into the memory-mapped uint8 cache; stream: decode every epoch in worker processes
    # (no cache); auto: memory unless the decoded splits would not fit in the cache folder's free disk space
    loader: LoaderMode = "auto"
    strict: bool = False  # every skipped file becomes an error
    shots: int | None = (
        None  # keep only this many training images per class (seeded): few-label studies
    )
    # --- model ---
    weights: str | None = None  # None | "imagenet" | path to a state dict (.safetensors / .pt)
    # --- transfer learning (see cnnlab.transfer) ---
    init_from: str | None = (
        None  # a cnnlab run / checkpoint (task A), "imagenet", or a weights file
    )
    freeze: str = "none"  # none | backbone | stages:N | up-to:LAYER | GLOB[,GLOB]
    strategy: Strategy = "full"  # full | linear-probe | fine-tune | gradual
    lr_mult: float = (
        0.1  # fine-tune/gradual: each earlier stage's rate is this times the next one's
    )
    head_epochs: int = (
        1  # fine-tune: epochs that train only the new head before everything unfreezes
    )
    label_smoothing: float = 0.0  # in [0, 1): weight moved from the true class to all classes
    # --- class imbalance (docs/imbalance.md) ---
    # none | auto | FILE.json {class: weight}. auto: w_c = N / (K n_c) over the training split
    # (scikit-learn's "balanced": the weights average 1 over training samples)
    class_weights: str = "none"
    # none: a seeded permutation per epoch; balanced: N indices drawn with replacement per epoch,
    # every class equally likely (P(sample) proportional to 1 / its class's count)
    sampler: Sampler = "none"
    loss: Loss = "ce"  # ce: cross-entropy; focal: -(1 - p_t)^gamma log p_t (Lin et al. 2017)
    focal_gamma: float = 2.0  # focal loss's focusing exponent (no unit); 0 gives cross-entropy
    # --- augmentation recipes (docs/recipes.md) ---
    # light | standard | strong: a named list of augmentations, joined with --augment's names
    # (the recipe's first, then any it lacks); none: --augment alone
    recipe: RecipeName = "none"
    # --- augmentation strengths: each acts only with its augmentation (docs/recipes.md) ---
    # > 0: MixUp's weight lam ~ Beta(alpha, alpha) (0.2: torchvision's recipe value)
    mixup_alpha: float = 0.2
    cutmix_alpha: float = 1.0  # > 0: CutMix's lam ~ Beta(alpha, alpha), 1 - lam the box's area
    # in [0, 1]: share of images erased (timm's recipes use 0.25, torchvision's 0.1)
    erasing_prob: float = 0.25
    randaugment_ops: int = 2  # >= 1: RandAugment ops applied in a row to each image
    randaugment_magnitude: int = 9  # 0..30: RandAugment strength (torchvision's 31 bins)
    # in [0, 1]: ColorJitter's brightness, contrast and saturation factors drawn in
    # [1 - jitter, 1 + jitter]
    jitter: float = 0.4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self, "max_bad_fraction", "label_smoothing")
        if not (math.isfinite(self.focal_gamma) and self.focal_gamma >= 0):
            raise ConfigError(f"option focal_gamma must be a number >= 0, got {self.focal_gamma}")
        if self.loss == "focal" and self.label_smoothing > 0:
            raise ConfigError(
                "option loss=focal does not combine with option label_smoothing "
                f"{self.label_smoothing:g} > 0 (the focal term has no smoothed form); leave one of "
                "them out"
            )
        if self.split_file is not None and not str(self.split_file).strip():
            raise ConfigError(
                "option split_file must be a JSON file of sample ids per split, got ''"
            )
        if not str(self.class_weights).strip():
            raise ConfigError("option class_weights must be none, auto or a JSON file, got ''")
        if self.shots is not None and self.shots < 1:
            raise ConfigError(f"option shots must be >= 1 image per class, got {self.shots}")
        if not 0.0 < self.lr_mult <= 1.0:
            raise ConfigError(f"option lr_mult must be in (0, 1], got {self.lr_mult}")
        check_positive(self, "in_channels", "max_image_pixels")
        check_non_negative(self, "head_epochs")
        check_augment(self, AUGMENTATIONS)
        check_augment_options(self)
        if self.loss == "focal" and set(augmentations(self)) & set(MIXING):
            mixing = next(a for a in augmentations(self) if a in MIXING)
            raise ConfigError(
                f"option loss=focal does not combine with augmentation {mixing!r} (mixed images "
                "have soft targets, the focal term needs one class); use loss=ce or leave it out"
            )


#: TrainConfig's augmentation strengths and the --augment name each acts on
AUGMENT_OPTIONS = {
    "mixup_alpha": "mixup",
    "cutmix_alpha": "cutmix",
    "erasing_prob": "erasing",
    "randaugment_ops": "randaugment",
    "randaugment_magnitude": "randaugment",
    "jitter": "jitter",
}


@dataclass(frozen=True)
class AugmentParams:
    """The augmentation strengths (:data:`AUGMENT_OPTIONS`) as one value the loader carries to
    cnnlab.data.augment. It has no defaults of its own: :meth:`of` reads a config's fields, and
    TrainConfig's defaults for those a config lacks (a bare loader; VideoConfig's randaugment and
    jitter strengths, augmentations video does not offer)."""

    mixup_alpha: float
    cutmix_alpha: float
    erasing_prob: float
    randaugment_ops: int
    randaugment_magnitude: int
    jitter: float

    @classmethod
    def of(cls, cfg: Any = None) -> AugmentParams:
        return cls(**{k: getattr(cfg, k, getattr(TrainConfig, k)) for k in AUGMENT_OPTIONS})


def check_augment_options(cfg: Any) -> None:
    """The augmentation strengths in their ranges, and each set (to other than its default) only
    when its augmentation is in use, else it would be ignored; one-line ConfigErrors naming it.

    Only the strengths ``cfg`` has are checked (VideoConfig has those of its --augment names, not
    randaugment's or jitter's), each against its own class's default."""
    own = {f.name: f.default for f in fields(cfg) if f.name in AUGMENT_OPTIONS}
    for key in ("mixup_alpha", "cutmix_alpha"):
        value = getattr(cfg, key, None)
        if key in own and not (
            isinstance(value, (int, float)) and math.isfinite(value) and value > 0
        ):
            raise ConfigError(
                f"option {key} must be a number > 0 (Beta(alpha, alpha)), got {value}"
            )
    for key in ("erasing_prob", "jitter"):
        value = getattr(cfg, key, None)
        if key in own and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ConfigError(f"option {key} must be in [0, 1], got {value}")
    if "randaugment_ops" in own:
        ops, magnitude = cfg.randaugment_ops, cfg.randaugment_magnitude
        if not (isinstance(ops, int) and not isinstance(ops, bool) and ops >= 1):
            raise ConfigError(f"option randaugment_ops must be an integer >= 1, got {ops}")
        if not (
            isinstance(magnitude, int) and not isinstance(magnitude, bool) and 0 <= magnitude <= 30
        ):
            raise ConfigError(
                "option randaugment_magnitude must be an integer in 0..30 (torchvision's 31 "
                f"magnitude bins), got {magnitude}"
            )
    check_unused_strengths(cfg, [k for k, default in own.items() if getattr(cfg, k) != default])


def check_unused_strengths(cfg: Any, keys: Iterable[str]) -> None:
    """A ConfigError for the first strength among ``keys`` whose augmentation ``cfg`` does not use
    (it would be ignored). :func:`check_augment_options` checks those set to other than their
    default (all a config can tell); the engine also checks those the user gave, whatever their
    value (``--mixup-alpha 0.2``, the default, without mixup)."""
    used = augmentations(cfg)
    for key in keys:
        name = AUGMENT_OPTIONS.get(key)
        if name is None or name in used or not hasattr(cfg, key):
            continue
        raise ConfigError(
            f"option {key}={getattr(cfg, key)} acts only on augmentation {name!r}, which this run "
            f"does not use; turn it on with --augment {name}{_by_recipe(cfg, name)}, or leave "
            f"{key} out"
        )


def _by_recipe(cfg: Any, name: str) -> str:
    """' or --recipe standard / strong': the recipes that turn augmentation ``name`` on, for a
    config that has recipes (TrainConfig; not VideoConfig)."""
    recipes = [r for r, names in RECIPES.items() if name in names]
    if not recipes or not any(f.name == "recipe" for f in fields(cfg)):
        return ""
    return f" or --recipe {' / '.join(recipes)}"


def augmentations(cfg: Any) -> tuple[str, ...]:
    """The augmentations a run applies: its recipe's list (``cfg.recipe``, when the config has
    one), then the names of ``cfg.augment`` the recipe lacks. Order is for reading only: the loader
    applies them in its own fixed order (cnnlab.data.augment)."""
    names = RECIPES[getattr(cfg, "recipe", "none") or "none"]
    return tuple(dict.fromkeys((*names, *cfg.augment)))


def check_augment(cfg: Any, allowed: tuple[str, ...], kind: str = "", why: str = "") -> None:
    """Every name in ``cfg.augment`` is one of ``allowed``; else a one-line ConfigError naming the
    first unknown one, its close matches and the choices (``kind``: "segmentation ", ...)."""
    unknown = [a for a in cfg.augment if a not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown {kind}augmentation {unknown[0]!r}{close_matches(unknown[0], allowed)}; "
            f"choose from {', '.join(allowed)} (or 'none'){why}"
        )


def score_threshold_of(recorded: Any, override: float | None) -> float:
    """The detection score threshold a command uses: ``override`` (``--score-threshold``) when
    given, else the run's ``recorded`` one. Scores are probabilities: an override outside [0, 1]
    (or NaN) is a one-line ConfigError, not an empty result (above 1 no box is ever kept)."""
    if override is None:
        return float(0.5 if recorded is None else recorded)
    value = float(override)
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise ConfigError(f"--score-threshold must be in [0, 1] (a detection score), got {value:g}")
    return value


def check_positive(cfg: Any, *names: str) -> None:
    """Each named option, when set, is > 0; else a one-line ConfigError naming it."""
    for key in names:
        value = getattr(cfg, key)
        if value is not None and not (value > 0 and math.isfinite(value)):  # nor nan, inf
            raise ConfigError(f"option {key} must be > 0, got {value}")


def check_non_negative(cfg: Any, *names: str) -> None:
    """Each named option, when set, is >= 0; else a one-line ConfigError naming it."""
    for key in names:
        value = getattr(cfg, key)
        if value is not None and not (value >= 0 and math.isfinite(value)):  # nor nan, inf
            raise ConfigError(f"option {key} must be >= 0, got {value}")


def check_run_name(name: str | None, out: str) -> None:
    """``name`` (--name) is one folder name inside ``out`` (--out): a separator or '..' would put
    the run outside it, and '' or '.' would be `out` itself (the run then got a name like '-2')."""
    if name is None:
        return
    if name.strip() in ("", ".", "..") or any(c in name for c in ("/", "\\", "\0")):
        raise ConfigError(
            f"option name must be one folder name inside option out ({out}): not empty, '.' or "
            f"'..', and without '/' or '\\'; got {name!r}"
        )


def check_fraction(cfg: Any, *names: str) -> None:
    """Each named option is in [0, 1) (a share of the data or of a weight); else a one-line
    ConfigError naming it."""
    for key in names:
        value = getattr(cfg, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"option {key} must be in [0, 1), got {value}")


def check_literals(cfg: Any) -> None:
    hints = get_type_hints(type(cfg))
    for f in fields(cfg):
        hint = hints[f.name]
        if get_origin(hint) is Literal:
            allowed = get_args(hint)
            value = getattr(cfg, f.name)
            if value not in allowed:
                raise ConfigError(
                    f"option {f.name}={value!r} is not allowed{close_matches(str(value), allowed)}; "
                    f"choose from {', '.join(map(str, allowed))}"
                )


def _coerce(name: str, hint: Any, value: Any) -> Any:
    """Turn a value read from JSON/TOML/CLI text into the field's type (bools, ints, tuples).

    Only exact conversions: an int field takes an integer (``4`` or ``"4"``), not ``1.5``,
    ``2.0`` or ``true``; a float field takes an int or a float, not ``true``. A file's
    ``epochs = 1.5`` had trained 1 epoch and ``lr = true`` at 1.0, while ``--epochs 1.5`` was
    refused: file, command line and keywords now meet the same rule."""
    if value is None:
        return None
    text = str(value).strip()
    base = hint
    if get_origin(hint) in (
        Union,
        types.UnionType,
    ):  # X | None -> X; X | Literal[...] -> the first that fits
        options = [a for a in get_args(hint) if a is not type(None)]
        # --grad-clip none, --ema none: the word for unset, where the field is no text itself
        optional = len(options) < len(get_args(hint)) and str not in options
        if optional and isinstance(value, str) and text.lower() == "none":
            return None
        refused: ConfigError | None = None
        for option in options[:-1]:
            try:
                return _coerce(name, option, value)
            except ConfigError as err:
                refused = err
        base = options[-1]
        # lr = true: the number's refusal, not "got 'True'" from the words
        if refused is not None and get_origin(base) is Literal and not isinstance(value, str):
            raise refused
    if get_origin(base) is Literal:  # checked with a close-match suggestion in __post_init__
        return text
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and text.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and text.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option {name} expects true/false, got {_shown(value)}")
    if base is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return int(value)
        try:
            if isinstance(value, str):
                return int(text)
        except ValueError:
            pass
        raise ConfigError(f"option {name} expects an integer, got {_shown(value)}")
    if base is float:
        number = None
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(text)
            except ValueError:
                pass
        if number is None:  # nan and inf pass: the field's range check names its range
            raise ConfigError(f"option {name} expects a number, got {_shown(value)}")
        return number
    if get_origin(base) is tuple:
        if isinstance(value, (list, tuple)):
            items = [str(v) for v in value]
        else:
            items = [v.strip() for v in text.split(",") if v.strip()]
        return tuple(v for v in items if v.lower() != "none")
    if base is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
        raise ConfigError(f"option {name} expects text, got {_shown(value)}; write it in quotes")
    return value


def _shown(value: Any) -> str:
    """A refused value as the user wrote it, with its type when that is what is wrong:
    ``true (a boolean)``, ``1.5 (a float)``, ``'ten'``."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    kind = {int: "an integer", float: "a float", list: "a list", dict: "a table"}
    return f"{value!r} ({kind.get(type(value), type(value).__name__)})"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a plain dict (data only: nothing is executed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    kind = "TOML" if path.suffix == ".toml" else "JSON"  # any other name is read as JSON
    try:
        text = path.read_text(encoding="utf-8")
        values = tomllib.loads(text) if kind == "TOML" else json.loads(text)
    except UnicodeDecodeError:  # an image or other binary file given by mistake
        raise ConfigError(
            f"config file {path} is not text (not UTF-8); give a .json or .toml file of options"
        ) from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid {kind}: {err}") from None
    if not isinstance(values, dict):  # `[1, 2]` or `"x"`: valid JSON, but no options
        raise ConfigError(
            f"config file {path} holds a JSON {type(values).__name__}, not an object of "
            'options; write {"option": value, ...} (e.g. {"epochs": 10})'
        )
    return values


def make_config(
    cls: type,
    file: str | Path | None = None,
    *,
    command_keys: Iterable[str] = (),
    **overrides: Any,
):
    """Build a frozen config: defaults < `file` < `overrides` (None overrides are ignored).

    ``command_keys``: options of the calling command itself that its config file may hold beside
    the config's (`cnnlab cv`'s folds); the command reads them, this leaves them out."""
    values: dict[str, Any] = {}
    if file is not None:
        skip = set(command_keys)
        values.update({k: v for k, v in load_config_file(file).items() if k not in skip})
    values.update({k: v for k, v in overrides.items() if v is not None})
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown option {key!r}{close_matches(key, names)}")
    coerced = {}
    for key, value in values.items():
        try:
            coerced[key] = _coerce(key, hints[key], value)
        except ConfigError as err:
            if file is None or overrides.get(key) is not None:
                raise
            raise ConfigError(f"config file {file}: {err}") from None  # which file, too
    return cls(**coerced)


@dataclass(frozen=True)
class PreprocessSpec:
    """How a file becomes a model input; stored with every checkpoint so prediction needs nothing else."""

    image_size: int
    in_channels: int
    mean: tuple[float, ...]  # per channel, in [0, 1] pixel units
    std: tuple[float, ...]
    resize: str = "fit"
    decode: dict[str, Any] = field(
        default_factory=dict
    )  # the decoding policy (see cnnlab.data.decode)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessSpec:
        return cls(
            image_size=int(d["image_size"]),
            in_channels=int(d["in_channels"]),
            mean=tuple(float(m) for m in d["mean"]),
            std=tuple(float(s) for s in d["std"]),
            resize=str(d.get("resize", "fit")),
            decode=dict(d.get("decode", {})),
        )
