"""The configs of the segmentation, detection and video tasks: typed, frozen, torch-free.

Each is a :class:`cnnlab.config.RunConfig` (the fields every task's run shares: data split,
optimisation, compute, run control -- the options of the one fit shell) plus the task's own fields,
re-declaring only the defaults it changes.

They live here, apart from the code that trains (cnnlab.segment, cnnlab.detect,
cnnlab.video.train, which re-export them), so that the command line builds one --option per field
-- `cnnlab segment train --help` -- without importing torch (about 2 s of every command). Their
checks need the task objects and the engine, so ``__post_init__`` imports those when a config is
made, which is when training or evaluation is about to import them anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar, Literal

from cnnlab.config import (
    DEFAULT_MAX_PIXELS,
    MIXING,
    Optimizer,
    Precision,
    RunConfig,
    TrainConfig,
    check_augment,
    check_augment_options,
    check_fraction,
    check_non_negative,
    check_positive,
)
from cnnlab.errors import ConfigError

Loss = Literal["ce", "ce+dice"]  # segmentation
EncoderVariant = Literal["auto", "imagenet", "small-input"]  # segmentation
Smoothing = Literal["mean", "majority"]  # video, 2D models: a clip's probabilities from its frames'
#: video --augment: the image side's names that act on a (N, T*C, S, S) clip as a whole (one draw
#: per clip for all its frames); the policies and jitter need 1 or 3 channels, so they are left out
VIDEO_AUGMENTATIONS = ("crop", "flip", "affine", "erasing", "mixup", "cutmix")


def reject_mixing(cfg: RunConfig, task: str, allowed: tuple[str, ...]) -> None:
    """A one-line ConfigError for --augment mixup / cutmix in a task whose targets cannot be mixed."""
    mixing = next((a for a in cfg.augment if a in MIXING), None)
    if mixing is not None:
        raise ConfigError(
            f"--augment {mixing}: mixing two images needs class targets that can be mixed, which "
            f"{task} has not; choose from {', '.join(allowed)}"
        )


@dataclass(frozen=True)
class SegmentConfig(RunConfig):
    """A segmentation run (`cnnlab segment train`): RunConfig with these defaults and fields."""

    # --- data ---
    # DIR (images/ + masks/) | VOC root | COCO instances .json | builtin:shapes?...
    data: str = "builtin:shapes?n=2000&size=32"
    data_root: str | None = None  # COCO: the folder holding the images (default: beside the JSON)
    in_channels: int | None = None  # None: the source's (3 for files)
    augment: tuple[str, ...] = ("crop", "flip")  # crop, flip: applied to image and mask alike
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit, enforced as an error
    # abort when more of the images than this cannot be decoded (each skipped with its mask)
    max_bad_fraction: float = 0.1
    strict: bool = False  # every skipped file becomes an error
    ignore_index: int = 255  # mask value that is never scored (VOC's void boundary, fit padding)
    # --- model ---
    model: str = (
        "unet"  # unet | fcn | deeplabv3 | lraspp | a torchvision builder (fcn_resnet50, ...)
    )
    encoder: str = "resnet18"  # a zoo classifier (resnet18/34/50, vgg11_bn, ...) or timm:NAME
    init_from: str | None = (
        None  # encoder weights: a cnnlab classification run, "imagenet", or a file
    )
    # auto: the zoo's rule (small-input stem below 64 px); imagenet: strided stem at any size
    # (about 16x fewer encoder FLOPs at 32 px); small-input: stride-1 stem at any size
    encoder_variant: EncoderVariant = "auto"
    # --- optimisation ---
    epochs: int = 20
    batch_size: int = 32
    optimizer: Optimizer = "adamw"
    lr: float = 2e-3  # peak learning rate (one-cycle), per batch of `batch_size`
    weight_decay: float = 1e-4  # never applied to norms and biases
    loss: Loss = "ce"  # ce: pixel cross-entropy; ce+dice: + dice_weight x soft Dice loss
    dice_weight: float = 1.0  # only with loss="ce+dice"
    # --- run control ---
    monitor: str = "val_miou"  # val_miou / val_accuracy (higher better) or val_loss / train_loss
    report_images: int = 6  # best and worst test images shown in the report

    def __post_init__(self) -> None:
        from cnnlab.data.masks import SEGMENTATION_AUGMENTATIONS
        from cnnlab.engine.trainer import check_monitor
        from cnnlab.tasks.segmentation import SegmentationTask

        super().__post_init__()
        check_positive(self, "report_images", "in_channels", "max_image_pixels")
        check_non_negative(self, "dice_weight")
        check_fraction(self, "max_bad_fraction")
        if not 0 <= self.ignore_index <= 255:
            raise ConfigError(
                f"option ignore_index must be in 0..255 (8-bit masks), got {self.ignore_index}"
            )
        per_process = self.batch_size // max(1, int(self.devices or 1))
        if (self.model == "deeplabv3" or self.model.startswith("deeplabv3_")) and per_process < 2:
            # ASPP's image-pooling branch normalises a 1x1 map: one image gives BatchNorm one
            # value per channel, and torch stops the first training step with a ValueError
            raise ConfigError(
                f"option batch_size {self.batch_size} is too small for {self.model}: its "
                "image-pooling BatchNorm needs at least 2 images per batch (per process); use "
                "--batch-size 2 or more, or another --model (unet, fcn, lraspp)"
            )
        reject_mixing(self, "segmentation (per-pixel masks)", SEGMENTATION_AUGMENTATIONS)
        check_augment(
            self, SEGMENTATION_AUGMENTATIONS, "segmentation ",
            ": others would interpolate class indices",
        )  # fmt: skip
        check_monitor(self.monitor, SegmentationTask, "segmentation")


@dataclass(frozen=True)
class DetectConfig(RunConfig):
    """A detection run (`cnnlab detect train`): RunConfig with these defaults and fields."""

    # --- data ---
    data: str = "builtin:shapes?n=600&size=64&objects=2"  # COCO .json | VOC dir | YOLO dir
    data_root: str | None = None  # COCO: the image folder (default: beside the JSON)
    # pixels (square); None: the images' own side when all share one square size (a builtin's;
    # at least 32), else 256
    image_size: int | None = None
    in_channels: int | None = None  # None: 3 (files) or the builtin's
    augment: tuple[str, ...] = ("flip",)  # flip only: the boxes follow the image's flips
    max_image_pixels: int = DEFAULT_MAX_PIXELS  # decompression-bomb limit, enforced as an error
    # abort when more of the images than this are skipped (cannot be decoded, or missing)
    max_bad_fraction: float = 0.1
    strict: bool = False  # every skipped file becomes an error
    # --- model ---
    model: str = "fasterrcnn"  # fasterrcnn | retinanet | fcos | ssdlite
    backbone: str = "resnet18"  # a zoo classifier or timm:NAME (ignored by ssdlite)
    init_from: str | None = None  # backbone weights: a cnnlab classification run, "imagenet", file
    backbone_variant: str = "auto"  # auto | imagenet | small-input (stem), as encoder_variant
    fpn_channels: int = 128  # FPN width: 128 instead of torchvision's 256 for CPU training
    box_head_width: int = 256  # Faster R-CNN box head (torchvision: 1024); ignored by the others
    # --- optimisation ---
    epochs: int = 20
    batch_size: int = 16
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3  # peak learning rate (one-cycle), per batch of `batch_size`
    weight_decay: float = 1e-4
    grad_clip: float | None = 10.0  # box regression losses spike early on; clip the grad norm
    score_threshold: float = 0.5  # for precision/recall at IoU 0.5 and drawn boxes
    # --- compute ---
    precision: Precision = "32"
    channels_last: bool | None = False  # torchvision's detection heads gain nothing from NHWC
    # --- run control ---
    monitor: str = "val_map50"  # val_map50 / val_map (higher better) or train_loss
    report_images: int = 6  # best and worst test images shown in the report

    # the detection models' smallest image side (pixels); the classifiers take MIN_IMAGE_SIZE
    min_image_size: ClassVar[int] = 32

    def __post_init__(self) -> None:
        from cnnlab.data.boxes import BOX_AUGMENTATIONS
        from cnnlab.engine.trainer import check_monitor
        from cnnlab.tasks.detection import DetectionTask

        super().__post_init__()
        check_positive(
            self, "report_images", "fpn_channels", "box_head_width", "in_channels",
            "max_image_pixels",
        )  # fmt: skip
        check_fraction(self, "max_bad_fraction")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ConfigError(
                f"option score_threshold must be in [0, 1], got {self.score_threshold}"
            )
        reject_mixing(self, "detection (boxes)", BOX_AUGMENTATIONS)
        check_augment(self, BOX_AUGMENTATIONS, "detection ")
        check_monitor(self.monitor, DetectionTask, "detection")
        self._check_model_options()

    #: the options only some detectors build with (ssdlite: torchvision's own MobileNetV3, no FPN)
    _USED_BY: ClassVar[dict[str, tuple[str, ...]]] = {
        "backbone": ("fasterrcnn", "retinanet", "fcos"),
        "backbone_variant": ("fasterrcnn", "retinanet", "fcos"),
        "fpn_channels": ("fasterrcnn", "retinanet", "fcos"),
        "box_head_width": ("fasterrcnn",),
    }

    def _check_model_options(self) -> None:
        """An option given (other than its default) to a detector that does not build with it was
        ignored without a word: `--model ssdlite --backbone resnet50` named its run
        ssdlite-resnet50 and trained MobileNetV3."""
        defaults = {f.name: f.default for f in fields(self)}
        unused = [k for k, models in self._USED_BY.items()
                  if self.model not in models and getattr(self, k) != defaults[k]]  # fmt: skip
        if unused:
            raise ConfigError(
                f"model {self.model} does not use {', '.join(f'option {k}' for k in unused)}: "
                f"leave {'it' if len(unused) == 1 else 'them'} out"
            )


@dataclass(frozen=True)
class VideoConfig(RunConfig):
    """A video classification run (`cnnlab video train`): RunConfig with these defaults and fields."""

    # --- data ---
    data: str = "builtin:moving-shapes?n=400&frames=8&size=32"  # builtin:moving-shapes?... | DIR
    frames: int | None = None  # T per clip, evenly over each video; None: builtin's, else 16
    image_size: int | None = None  # frame side (pixels, square); None: the builtin's, else 112
    test_fraction: float = 0.2
    # One random crop / flip / affine / erasing per clip, the same for all its frames; mixup and
    # cutmix mix whole clips. flip mirrors motion (left <-> right): leave it out when classes
    # depend on direction.
    augment: tuple[str, ...] = ("crop",)
    # --- augmentation strengths: each acts only with its augmentation (TrainConfig's defaults) ---
    # > 0: MixUp's weight lam ~ Beta(alpha, alpha), two whole clips mixed
    mixup_alpha: float = TrainConfig.mixup_alpha
    # > 0: CutMix's lam ~ Beta(alpha, alpha), 1 - lam the box's area (the same box in every frame)
    cutmix_alpha: float = TrainConfig.cutmix_alpha
    # in [0, 1]: share of clips erased (one box per clip, the same in all its frames)
    erasing_prob: float = TrainConfig.erasing_prob
    max_bad_fraction: float = 0.1  # abort when more of the videos than this cannot be decoded
    strict: bool = False  # every skipped file becomes an error
    # --- model ---
    model: str = "r3d_small"  # r3d_18 | mc3_18 | r2plus1d_18 | r3d_small | a 2D zoo model per frame
    weights: str | None = None  # None | "kinetics" (torchvision 3D models) | "imagenet" (2D)
    smoothing: Smoothing = "mean"  # 2D models: a clip's probabilities from its frames'
    # --- optimisation ---
    batch_size: int = 16  # clips per step (a 2D model sees their batch_size x T frames)
    optimizer: Optimizer = "adamw"
    lr: float = 2e-3  # peak rate (one-cycle) per batch of `batch_size` clips
    weight_decay: float = 1e-4  # never applied to norms and biases
    label_smoothing: float = 0.0  # in [0, 1): weight moved from the true class to all classes
    # --- compute ---
    channels_last: bool | None = False  # clips are (N, T*C, S, S) stacks, not NHWC images

    def __post_init__(self) -> None:
        from cnnlab.engine.trainer import check_monitor
        from cnnlab.tasks.classification import ClassificationTask

        super().__post_init__()
        check_fraction(self, "max_bad_fraction", "label_smoothing")
        if self.frames is not None and self.frames < 2:
            raise ConfigError(f"option frames must be >= 2 (a clip), got {self.frames}")
        check_augment(self, VIDEO_AUGMENTATIONS, "video ")
        check_augment_options(self)
        check_monitor(self.monitor, ClassificationTask, "video")
