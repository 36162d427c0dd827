"""Segmentation networks: a zoo encoder + a decoder head; ``forward(images) -> logits (N,K,H,W)``.

Architectures (``model``), each on an encoder from the classification zoo (``encoder``:
resnet18/34/50, vgg11_bn, ... -- any zoo model whose ``feature_info`` stages run once per forward):

* ``unet``       -- U-Net (Ronneberger et al., 2015): the decoder upsamples the deepest feature map
                    stage by stage, concatenating the encoder's map of the same scale (skip
                    connection) and applying two 3x3 conv-BN-ReLU; when the shallowest stage is
                    already downsampled (ImageNet stems), a small full-resolution conv on the image
                    is the last skip, so edges are drawn at pixel resolution.
* ``fcn``        -- torchvision's ``FCNHead`` (Long et al., 2015) on the deepest map, upsampled
                    bilinearly.
* ``deeplabv3``  -- torchvision's ``DeepLabHead`` (ASPP, Chen et al., 2017) on the deepest map.
* ``lraspp``     -- torchvision's ``LRASPPHead`` (Howard et al., 2019): deepest map gated by its
                    global average, plus a linear classifier on a stage with 1/4 of its reduction.

Plus torchvision's complete builders, by their names (``fcn_resnet50``, ``deeplabv3_resnet50``,
``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``, ...), always built with
``weights=None, weights_backbone=None`` and no auxiliary head.

Why not segmentation-models-pytorch: it brings timm and huggingface-hub and its own encoder
copies; here the encoder *is* a zoo model, so a cnnlab classification run (or the zoo's published
weights) initialises it with the zoo's own loading code and key names. Multi-scale features come
from forward hooks on the modules that ``feature_info`` names, so no architecture needs its own
feature-extraction code; the encoder's classification head is replaced by ``nn.Identity``.

``encoder="timm:NAME"``: any of timm's convolutional models as the encoder, through timm's own
feature extractor (``timm.create_model(NAME, features_only=True)``, cnnlab.models._timm
.TimmEncoder): its ``feature_info`` channels and reductions feed the same decoders.

The encoder keeps the zoo's input-size rule: below 64 px ResNets use the CIFAR stem (reductions
1, 2, 4, 8), from 64 px the ImageNet stem (2, 4, 8, 16, 32).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.errors import CheckpointError, ConfigError, close_matches
from cnnlab.models._registry import TASK_MODELS

log = logging.getLogger(__name__)

ARCHITECTURES = tuple(TASK_MODELS["segmentation"])  # unet, fcn, deeplabv3, lraspp
ENCODER_VARIANTS = ("auto", "imagenet", "small-input")


def torchvision_builders() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models.segmentation))


def list_segmentation_models() -> list[str]:
    """Architecture names (used with an ``encoder``) followed by torchvision's complete builders."""
    return [*ARCHITECTURES, *torchvision_builders()]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Encoder(nn.Module):
    """A zoo classifier without its head; ``forward(x)``: the stage maps, shallow first."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        from cnnlab.models._base import HEAD, set_submodule

        self.backbone = backbone
        self.info = [dict(i) for i in backbone.feature_info]
        for label, paths in backbone._stages:
            if label == HEAD:  # pooling + classifier are never run: drop their parameters
                for path in paths:
                    set_submodule(backbone, path, nn.Identity())
        self._maps: list[Tensor] = []
        for i in self.info:
            backbone.get_submodule(i["module"]).register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self._maps.append(output)

    @property
    def channels(self) -> list[int]:
        return [int(i["num_chs"]) for i in self.info]

    @property
    def reductions(self) -> list[int]:
        return [int(i["reduction"]) for i in self.info]

    def forward(self, x: Tensor) -> list[Tensor]:
        self._maps = []
        self.backbone.forward_features(x)
        maps, self._maps = self._maps, []
        if len(maps) != len(self.info):  # a stage module ran twice or never: hooks cannot tell
            raise ConfigError(
                f"encoder {self.backbone.default_cfg.get('name')} cannot serve as a segmentation "
                f"encoder: its {len(self.info)} feature stages produced {len(maps)} maps"
            )
        return maps


class UNetDecoder(nn.Module):
    """Deep-to-shallow: upsample to the skip's size, concatenate, two 3x3 conv-BN-ReLU."""

    def __init__(self, channels: list[int], in_channels: int, full_res_skip: bool) -> None:
        super().__init__()
        # Decoder widths: half of each skip's channels (16..256): a light decoder for CPU training.
        widths = [min(256, max(16, c // 2)) for c in channels]
        self.blocks = nn.ModuleList()
        current = channels[-1]
        for skip, width in zip(reversed(channels[:-1]), reversed(widths[:-1]), strict=True):
            self.blocks.append(
                nn.Sequential(_conv_bn_relu(current + skip, width), _conv_bn_relu(width, width))
            )
            current = width
        self.stem = _conv_bn_relu(in_channels, 16) if full_res_skip else None
        if self.stem is not None:
            self.blocks.append(
                nn.Sequential(_conv_bn_relu(current + 16, 16), _conv_bn_relu(16, 16))
            )
            current = 16
        self.out_channels = current

    def forward(self, image: Tensor, maps: list[Tensor]) -> Tensor:
        x = maps[-1]
        skips = list(reversed(maps[:-1]))
        if self.stem is not None:
            skips.append(self.stem(image))  # N x 16 x H x W
        for block, skip in zip(self.blocks, skips, strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return x


class SegmentationModel(nn.Module):
    """encoder + decoder/head; ``forward(images (N, C, H, W)) -> logits (N, num_classes, H, W)``."""

    def __init__(
        self, arch: str, encoder: Encoder | nn.Module, num_classes: int, in_channels: int
    ) -> None:
        super().__init__()
        self.arch = arch
        self.encoder = encoder
        chs, red = encoder.channels, encoder.reductions
        if arch == "unet":
            self.decoder = UNetDecoder(chs, in_channels, full_res_skip=red[0] > 1)
            self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        elif arch == "fcn":
            from torchvision.models.segmentation.fcn import FCNHead

            self.head = FCNHead(chs[-1], num_classes)
        elif arch == "deeplabv3":
            from torchvision.models.segmentation.deeplabv3 import DeepLabHead

            self.head = DeepLabHead(chs[-1], num_classes)
        elif arch == "lraspp":
            from torchvision.models.segmentation.lraspp import LRASPPHead

            # The "low" stage: reduction closest to a quarter of the deepest (8 vs 32 in the paper).
            self.low = min(range(len(red) - 1), key=lambda i: abs(red[i] - red[-1] / 4))
            self.head = LRASPPHead(chs[self.low], chs[-1], num_classes, 128)
        else:  # pragma: no cover - create_segmentation_model checks the name
            raise AssertionError(arch)

    def forward(self, x: Tensor) -> Tensor:
        maps = self.encoder(x)
        if self.arch == "unet":
            out = self.head(self.decoder(x, maps))
        elif self.arch == "lraspp":
            out = self.head({"low": maps[self.low], "high": maps[-1]})
        else:
            out = self.head(maps[-1])
        if out.shape[-2:] != x.shape[-2:]:
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out  # N x num_classes x H x W


class TorchvisionSegmentation(nn.Module):
    """torchvision's builder (returns {"out": ...}) behind the one-tensor ``forward``."""

    def __init__(self, name: str, num_classes: int) -> None:
        super().__init__()
        import torchvision

        self.net = torchvision.models.get_model(
            name, weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)["out"]  # N x num_classes x H x W


def create_segmentation_model(
    model: str,
    *,
    num_classes: int,
    encoder: str = "resnet18",
    in_channels: int = 3,
    image_size: int | None = None,
    encoder_weights: str | None = None,
    encoder_variant: str = "auto",
) -> nn.Module:
    """Build a segmentation network (see the module docstring); logits (N, num_classes, H, W).

    ``encoder_weights``: None (random init), ``"imagenet"`` / a torchvision tag / a state-dict file
    (loaded by the zoo), or a cnnlab classification run / checkpoint (its encoder keys are loaded;
    see :func:`load_encoder_from_run`). ``encoder_variant``: "auto" (the zoo's rule: small-input
    stem below 64 px), "imagenet" (the ImageNet stem at any size: 16x fewer encoder FLOPs at 32 px,
    the U-Net's full-resolution skip keeps the edges) or "small-input". The result has
    ``default_cfg`` (model, encoder, mean/std, and what initialised the encoder).
    """
    from cnnlab.models import create_model, list_models

    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    choices = list_segmentation_models()
    if model in torchvision_builders():
        if in_channels != 3:
            raise ConfigError(
                f"{model} is torchvision's RGB network; use in_channels=3 or "
                "a zoo encoder (model=unet/fcn/deeplabv3/lraspp)"
            )
        if encoder_weights:
            raise ConfigError(
                f"{model} is built without published weights here; use an "
                "architecture with a zoo encoder to initialise the encoder"
            )
        net: nn.Module = TorchvisionSegmentation(model, num_classes)
        net.default_cfg = {"model": model, "encoder": None, "mean": None, "std": None}
        return net
    if model not in ARCHITECTURES:
        raise ConfigError(
            f"unknown segmentation model {model!r}{close_matches(model, choices)}; "
            f"choose from {', '.join(choices)}"
        )
    from cnnlab.models._timm import is_timm

    if not is_timm(encoder) and encoder not in list_models():
        raise ConfigError(
            f"unknown encoder {encoder!r}{close_matches(encoder, list_models())}; "
            "choose a zoo model, e.g. resnet18, resnet34, resnet50, vgg11_bn, or timm:NAME"
        )
    if encoder_variant not in ENCODER_VARIANTS:
        raise ConfigError(
            f"unknown encoder_variant {encoder_variant!r}"
            f"{close_matches(encoder_variant, ENCODER_VARIANTS)}; choose from "
            f"{', '.join(ENCODER_VARIANTS)}"
        )
    if is_timm(encoder) and encoder_variant == "small-input":
        raise ConfigError(
            f"encoder_variant small-input is the zoo's stride-1 stem; {encoder} keeps timm's own "
            "stem: leave --encoder-variant out"
        )
    from cnnlab.models import SMALL_INPUT_BELOW

    if encoder_variant == "imagenet":  # the zoo picks the variant from the size it is told
        image_size = max(image_size or 224, SMALL_INPUT_BELOW)
    elif encoder_variant == "small-input":
        image_size = min(image_size or 32, SMALL_INPUT_BELOW - 1)
    run_source = cnnlab_checkpoint(encoder_weights)
    zoo_weights = None if run_source is not None else encoder_weights
    if is_timm(encoder):  # timm's own feature extractor (features_only), not hooks on a classifier
        from cnnlab.models._timm import create_timm_encoder

        features: Encoder | nn.Module = create_timm_encoder(
            encoder, in_channels=in_channels, weights=zoo_weights, image_size=image_size
        )
        cfg = dict(features.default_cfg)
    else:
        backbone = create_model(
            encoder,
            num_classes=1000 if zoo_weights else 2,
            in_channels=in_channels,
            weights=zoo_weights,
            image_size=image_size,
        )
        cfg = dict(backbone.default_cfg)
        features = Encoder(backbone)
    net = SegmentationModel(model, features, num_classes, in_channels)
    provenance: dict[str, Any] = {"source": zoo_weights} if zoo_weights else {}
    if run_source is not None:
        provenance = load_encoder_from_run(net.encoder, run_source, encoder)
    net.default_cfg = {
        "model": model,
        "encoder": encoder,
        "mean": list(provenance.get("mean") or cfg["mean"]),
        "std": list(provenance.get("std") or cfg["std"]),
        "encoder_init": provenance or None,
        "encoder_variant": cfg.get("variant"),
        "reductions": net.encoder.reductions,
        "pretrained": bool(provenance),
    }
    return net


def cnnlab_checkpoint(weights: str | None) -> Path | None:
    """The cnnlab checkpoint meant by ``weights`` (a run folder or a .safetensors with cnnlab
    metadata), or None when it is something for the zoo (None, "imagenet", a plain state dict)."""
    if not weights:
        return None
    from cnnlab.run import resolve_weights

    p = Path(weights).expanduser()
    if p.is_dir():
        return resolve_weights(p)
    if p.is_file() and p.suffix == ".safetensors":
        from cnnlab.engine.checkpoint import read_weights

        _, meta = read_weights(p)
        return p if "model" in meta and "preprocess" in meta else None
    return None


def load_encoder_from_run(encoder: Encoder, weights: Path, encoder_name: str) -> dict[str, Any]:
    """Copy the backbone tensors of a cnnlab classification checkpoint into ``encoder``.

    The checkpoint's ``model`` must be ``encoder_name``; every encoder tensor must be present with
    the same shape (a 28 px run has the small-input stem, a 224 px one the ImageNet stem -- they do
    not fit each other). The classifier keys of the run are skipped. Returns provenance incl. the
    run's mean/std (what the encoder learnt on).
    """
    from cnnlab.engine.checkpoint import read_weights

    state, meta = read_weights(weights)
    if meta.get("model") != encoder_name:
        raise CheckpointError(
            f"{weights} holds a {meta.get('model')!r} model, but the encoder is "
            f"{encoder_name!r}; pass --encoder {meta.get('model')}"
        )
    own = encoder.backbone.state_dict()
    missing = [k for k in own if k not in state]
    shapes = [
        f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or shapes:
        raise CheckpointError(
            f"{weights} does not fit the {encoder_name} encoder: missing {missing[:5]}, other "
            f"shapes {shapes[:5]} (was it trained at another image size or channel count? "
            f"it was trained at {meta.get('image_size')} px, {meta.get('in_channels')} channels)"
        )
    encoder.backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    pre = meta.get("preprocess", {})
    log.info("encoder %s initialised from %s (%d tensors)", encoder_name, weights, len(own))
    return {
        "source": str(weights),
        "task": meta.get("task"),
        "tensors": len(own),
        "mean": pre.get("mean"),
        "std": pre.get("std"),
    }
