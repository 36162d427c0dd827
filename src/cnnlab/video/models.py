"""Clip classifiers: torchvision's 3D CNNs, one small 3D CNN, and any zoo 2D model run per frame.

:func:`create_video_model` is the one door. Every model it returns maps a batch of clips to
logits ``(N, num_classes)`` and accepts clips in either layout:

- ``(N, C, T, H, W)``: torchvision's video layout;
- ``(N, T*C, H, W)``: the T frames stacked along the channel axis (frame-major: channels
  ``t*C .. t*C + C-1`` are frame t). This is how cnnlab's tensor loader carries clips: the image
  side's :class:`~cnnlab.data.loader.TensorLoader`, its augmentations (one crop/flip per clip, so
  the same for all its frames) and its evaluation work on clips unchanged.

3D models (``r3d_18``, ``mc3_18``, ``r2plus1d_18`` from ``torchvision.models.video``, and
``r3d_small``) see the frames in order: their 3x3x3 kernels respond to motion. They end in
adaptive average pooling, so any clip length and frame size works (tested down to 4 x 16 x 16).

A 2D zoo model (``lenet5``, ``resnet18``, ...) is wrapped in :class:`FrameClassifier`: trained on
single frames labelled with their clip's class, and scored per clip by smoothing its frame
probabilities (``mean`` or ``majority``). It sees no order, so it cannot tell motion apart.
"""

from __future__ import annotations

import logging

import torch
import torchvision
from torch import Tensor, nn

from cnnlab.errors import CheckpointError, ConfigError, close_matches
from cnnlab.models._base import ClassifierModel
from cnnlab.models._registry import TASK_MODELS

log = logging.getLogger(__name__)

TORCHVISION_3D = ("r3d_18", "mc3_18", "r2plus1d_18")
SMALL_3D = "r3d_small"
VIDEO_MODELS = tuple(TASK_MODELS["video-classification"])  # the registry's list, in this order
assert VIDEO_MODELS == (*TORCHVISION_3D, SMALL_3D)
# torchvision's Kinetics-400 preprocessing (pixels in [0, 1]); the weights were trained with it.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
# Weight of the mean probability in a majority vote: only breaks ties between equal vote counts.
_TIE_BREAK = 1e-6


def is_3d(name: str) -> bool:
    return name in VIDEO_MODELS


def to_clips(x: Tensor, in_channels: int) -> Tensor:
    """(N, T*C, H, W) frame-stacked or (N, C, T, H, W) -> (N, C, T, H, W) (a view when possible)."""
    if x.ndim == 5:
        return x
    if x.ndim != 4 or x.shape[1] % in_channels:
        raise ValueError(
            f"clips must be (N, C, T, H, W) or (N, T*{in_channels}, H, W), got {tuple(x.shape)}"
        )
    n, tc, h, w = x.shape
    return x.view(n, tc // in_channels, in_channels, h, w).transpose(1, 2)


def smooth_frame_probs(probs: Tensor, smoothing: str) -> Tensor:
    """Per-frame probabilities (N, T, K) -> per-clip probabilities (N, K), rows summing to 1.

    mean: the average of the frames' probabilities. majority: the share of frames whose arg-max is
    each class, ties between equal vote counts broken by the mean probability (it enters with
    weight 1e-6, so the values stay the vote shares to 6 decimals).
    """
    mean = probs.mean(1)
    if smoothing == "mean":
        return mean
    if smoothing != "majority":
        raise ConfigError(f"smoothing must be 'mean' or 'majority', got {smoothing!r}")
    votes = nn.functional.one_hot(probs.argmax(2), probs.shape[2]).to(probs.dtype).mean(1)
    return (votes + _TIE_BREAK * mean) / (1 + _TIE_BREAK)


class ShortClipConv3d(nn.Conv3d):
    """``nn.Conv3d`` that computes its weight gradient in float32 under CPU bf16 autocast when the
    clip has fewer frames than the kernel is deep.

    Why: on CPU, oneDNN's bf16 conv3d returns a wrong weight gradient -- arbitrary values, up to
    1e36 or NaN, different on every call -- when every output frame reads the temporal padding
    (input depth < kernel depth, e.g. 2 frames under a 3x3x3 kernel, stride 1), with 16 channels
    or more (measured with torch 2.14 on an AVX-512 CPU with native bf16; the output and the input
    gradient are right, float32 is right). r3d_small meets it at 8 frames in layer3 (T = 2), at 4
    frames in layer2: its bf16 training varied from run to run and at times turned NaN. Those
    layers are the smallest in the network, so float32 there costs little; everything else keeps
    bf16. Inference and frozen weights need no weight gradient and stay in bf16.
    """

    def forward(self, x: Tensor) -> Tensor:
        if (
            x.shape[2] < self.kernel_size[0]
            and x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and torch.is_grad_enabled()
            and self.weight.requires_grad
        ):
            with torch.autocast("cpu", enabled=False):  # weights stay float32 under autocast
                return super().forward(x.float())
        return super().forward(x)


def use_short_clip_convs(net: nn.Module) -> nn.Module:
    """Turn every temporal ``nn.Conv3d`` of ``net`` (kernel depth > 1) into a
    :class:`ShortClipConv3d`, in place: same parameters and state-dict keys (so Kinetics
    checkpoints still load); torchvision's ``Conv3DSimple`` adds nothing to ``nn.Conv3d`` after
    construction. Returns ``net``."""
    for module in net.modules():
        if isinstance(module, nn.Conv3d) and module.kernel_size[0] > 1:
            module.__class__ = ShortClipConv3d
    return net


class ClipClassifier(ClassifierModel):
    """A VideoResNet (stem, layer1..4, avgpool, fc) behind the cnnlab model surface.

    State-dict keys are torchvision's (``stem.0.weight``, ``layer1.0.conv1.0.weight``,
    ``fc.weight``), so torchvision's Kinetics checkpoints load as they are.
    """

    classifier_path = "fc"
    first_conv_path = "stem.0"

    def __init__(self, net: nn.Module, name: str, num_classes: int, frames: int, image_size: int):
        super().__init__()
        self.in_channels = 3
        self.stem, self.avgpool, self.fc = net.stem, net.avgpool, net.fc
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            net.layer1, net.layer2, net.layer3, net.layer4,
        )  # fmt: skip
        # Output channels of the stem (r2plus1d's has two convs) and of each stage.
        widths = [[m for m in self.stem if isinstance(m, nn.BatchNorm3d)][-1].num_features] + [
            getattr(self, f"layer{i}")[-1].conv2[1].num_features for i in range(1, 5)
        ]
        self._stages = [
            ("stem", ("stem",)),
            *[(f"layer{i}", (f"layer{i}",)) for i in range(1, 5)],
            ("head", ("avgpool", "fc")),
        ]
        # Spatial reductions (the stem strides 2 in H and W only; layers 2-4 stride 2 in T, H, W).
        self.feature_info = [
            {"name": "stem", "module": "stem", "stage": "stem", "num_chs": widths[0],
             "reduction": 2},
            *[
                {"name": f"layer{i}", "module": f"layer{i}", "stage": f"layer{i}",
                 "num_chs": widths[i], "reduction": 2 ** max(i, 1)}
                for i in range(1, 5)
            ],
        ]  # fmt: skip
        self.default_cfg = {
            "name": name,
            "family": "video-resnet",
            "input_size": (3, frames, image_size, image_size),
            "mean": KINETICS_MEAN,
            "std": KINETICS_STD,
            "num_classes": num_classes,
            "weights": None,
        }

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(to_clips(x, self.in_channels))  # N x 64 x T x H/2 x W/2 (r3d_18)
        x = self.layer1(x)
        x = self.layer2(x)  # T, H, W halved by each of layers 2-4
        x = self.layer3(x)
        return self.layer4(x)  # N x 512 x T/8 x H/16 x W/16 (at least 1 each)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(self.avgpool(features).flatten(1))  # N x num_classes


class _SmallR3D(nn.Module):
    """r3d_small: torchvision's own 3D ResNet blocks (BasicBlock + Conv3DSimple), one block per
    stage and widths 16-32-64-128 instead of two blocks at 64-128-256-512.

    Why a model of our own: torchvision's video models are its Kinetics architectures
    (r3d_18 33 M parameters, mc3_18 11.5 M, r2plus1d_18 31 M; s3d, MViT and Swin3D are larger);
    none is small enough to train on a laptop CPU in minutes, which is what a course exercise on
    motion needs (see benchmarks/bench_video.py). Same layout and attribute names as VideoResNet,
    so everything above (ClipClassifier, freezing by stage) treats it the same.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64, 128)) -> None:
        super().__init__()
        from torchvision.models.video.resnet import BasicBlock, Conv3DSimple

        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
        )
        inplanes = widths[0]
        for i, planes in enumerate(widths):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or inplanes != planes:
                down = nn.Sequential(
                    nn.Conv3d(inplanes, planes, 1, stride=stride, bias=False),
                    nn.BatchNorm3d(planes),
                )
            block = BasicBlock(inplanes, planes, Conv3DSimple, stride, down)
            setattr(self, f"layer{i + 1}", nn.Sequential(block))
            inplanes = planes
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():  # VideoResNet's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)


class FrameClassifier(nn.Module):
    """A zoo 2D classifier applied to every frame; clip probabilities smooth the frames'.

    ``forward``: frames (N, C, H, W) -> frame logits (training); clips (N, T*C, H, W) or
    (N, C, T, H, W) -> log of the smoothed clip probabilities (N, K), so that ``softmax`` of the
    output is exactly the smoothed probabilities. The two 4-D layouts differ in their channel
    count (C against T*C with T >= 2).
    """

    def __init__(self, net: nn.Module, in_channels: int, smoothing: str) -> None:
        super().__init__()
        self.net, self.in_channels, self.smoothing = net, in_channels, smoothing
        self.default_cfg = dict(getattr(net, "default_cfg", {}), smoothing=smoothing)
        self.feature_info = getattr(net, "feature_info", [])

    def frame_logits(self, frames: Tensor) -> Tensor:
        return self.net(frames)  # N x K

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4 and x.shape[1] == self.in_channels:
            return self.net(x)
        clips = to_clips(x, self.in_channels)
        n, c, t, h, w = clips.shape
        frames = clips.transpose(1, 2).reshape(n * t, c, h, w)
        probs = self.net(frames).float().softmax(1).view(n, t, -1)  # N x T x K
        return smooth_frame_probs(probs, self.smoothing).log()


def _kinetics_state(name: str) -> dict[str, Tensor]:
    weights = torchvision.models.get_model_weights(name).KINETICS400_V1
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash a RuntimeError
        raise CheckpointError(
            f"could not download the Kinetics-400 weights for {name} from {weights.url} ({err}). "
            f"Without network access, copy that file into {torch.hub.get_dir()}/checkpoints on "
            "this machine, or leave weights out to train from scratch"
        ) from err


def check_video_model(name: str, weights: str | None = None, smoothing: str = "mean") -> None:
    """Raise :class:`ConfigError` (with close matches) unless ``name``, ``weights`` and
    ``smoothing`` fit, without building anything: configs are checked before any video is
    decoded. ``smoothing`` scores a clip from its frames' probabilities, so only a 2D (per-frame)
    model uses it: set away from its default for a 3D model, it would change nothing."""
    from cnnlab.models import list_models

    if is_3d(name):
        if smoothing != "mean":
            raise ConfigError(
                f"option smoothing {smoothing!r} has no effect on the 3D model {name}: it "
                "classifies each clip as a whole; smoothing scores a clip from a 2D model's "
                "frames (a zoo model such as lenet5); leave smoothing out"
            )
        if weights not in (None, "kinetics"):
            raise ConfigError(
                f"option weights {weights!r} does not fit the 3D model {name}: give 'kinetics' "
                "or leave weights out"
            )
        if name == SMALL_3D and weights:
            raise ConfigError(
                f"{SMALL_3D} has no published weights (it is cnnlab's own small 3D CNN); "
                "leave weights out, or choose r3d_18, mc3_18 or r2plus1d_18 for option weights "
                "'kinetics'"
            )
        return
    if name not in list_models():
        choices = [*VIDEO_MODELS, *list_models()]
        raise ConfigError(
            f"unknown video model {name!r}{close_matches(name, choices)}; 3D models: "
            f"{', '.join(VIDEO_MODELS)}; or any 2D zoo model, trained per frame: "
            f"{', '.join(list_models())}"
        )
    if weights == "kinetics":
        raise ConfigError(f"{name} is a 2D model: weights='kinetics' is for the 3D models")


def create_video_model(
    name: str,
    *,
    num_classes: int,
    frames: int,
    image_size: int,
    weights: str | None = None,
    smoothing: str = "mean",
) -> nn.Module:
    """The one door for clip classifiers.

    Args:
        name: a 3D model (``r3d_18``, ``mc3_18``, ``r2plus1d_18``, ``r3d_small``) or any zoo 2D
            model name (see ``cnnlab models``), then trained per frame.
        num_classes: outputs. frames: T, frames per clip. image_size: frame side in pixels.
        weights: None (random init); ``"kinetics"`` (torchvision's KINETICS400_V1 for the three
            torchvision 3D models, downloaded once); ``"imagenet"`` or a file for a 2D model.
        smoothing: ``mean`` | ``majority``, how a 2D model scores a clip from its frames.
    """
    from cnnlab.models import create_model

    check_video_model(name, weights)
    if is_3d(name):
        if name == SMALL_3D:
            net = _SmallR3D(num_classes)
        elif weights == "kinetics":
            net = getattr(torchvision.models.video, name)(weights=None, num_classes=400)
            net.load_state_dict(_kinetics_state(name))
        else:
            net = getattr(torchvision.models.video, name)(weights=None, num_classes=num_classes)
        use_short_clip_convs(net)  # bf16 autocast on CPU: see ShortClipConv3d
        model = ClipClassifier(net, name, 400 if weights else num_classes, frames, image_size)
        if weights:
            model.reset_classifier(num_classes)
            model.default_cfg["weights"] = "torchvision:KINETICS400_V1"
        return model
    net = create_model(
        name, num_classes=num_classes, in_channels=3, weights=weights, image_size=image_size
    )
    return FrameClassifier(net, 3, smoothing)
