"""Everything that depends on the machine, decided in one place for every task: the device, the precision
of training and of inference, the memory layout, seeding, and the description of the machine recorded
beside every result (run.json, evaluations, benchmarks).

Two precision policies, on purpose:

* **training** (`resolve_precision`): ``auto`` autocasts to bf16 where the hardware runs it natively (CUDA
  bf16, AVX-512 BF16 / AMX CPUs) and the model is large enough to gain; fp16 only when asked (CUDA).
* **inference** (`inference_precision`): ``auto`` is fp32 on CPU, and on CUDA the precision the run was
  trained and validated with. So `predict`, `evaluate`, `explain`, `serve` and the ONNX parity check give
  the same probabilities for the same run and image on one machine, whatever its CPU; bf16 inference is an
  explicit ``--precision bf16``, printed and recorded with the outputs. (Before this, inference autocast to
  bf16 on bf16-capable CPUs only, so the same run gave answers 0.008 apart between `predict RUN` and
  `predict model.onnx` there, and fp32-exact answers elsewhere.)
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np
import torch

from cnnlab.errors import ConfigError

PRECISIONS = ("auto", "32", "bf16", "16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda was asked for, but no CUDA GPU is visible; use --device cpu or auto"
        )
    return torch.device(name)


def cpu_capability() -> str:
    """PyTorch's name for the widest vector unit its kernels use here: DEFAULT, AVX2, AVX512, ..."""
    return str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")())


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 / AMX: bf16 matmuls run natively (about 2.8x fp32 here); elsewhere bf16 is emulated and slow."""
    return (
        cpu_capability() in ("AVX512_BF16", "AMX", "AVX512")
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def _check(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "16" and device.type != "cuda":
        raise ConfigError(
            "--precision 16 needs a CUDA GPU (fp16 with a gradient scaler); use bf16 or 32 on CPU"
        )


def resolve_precision(
    precision: str, device: torch.device, model_flops: float | None = None
) -> str:
    """Training: auto = bf16 autocast where the hardware runs bf16 natively, else fp32; fp16 only when asked (CUDA)."""
    _check(precision, device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "16"
    # On CPU, tiny models (LeNet-5: ~0.4 MFLOP per image) stay fp32: bf16 autocast gains them nothing
    # (LeNet-5's 8 MNIST epochs took 1.9 s in either precision on a Zen 4 with native bf16) and fp32
    # gives their runs the same results on every CPU, native bf16 or not.
    if model_flops is not None and model_flops < 20e6:
        return "32"
    return "bf16" if cpu_has_bf16() else "32"


def inference_precision(
    precision: str | None, device: torch.device, trained: str | None = None
) -> str:
    """Inference: an explicit choice wins; auto (or None) is fp32 on CPU, and on CUDA the precision the run
    was trained and validated with (`trained`, from its run.json; fp32 when unknown)."""
    precision = precision or "auto"
    _check(precision, device)
    if precision != "auto":
        return precision
    if device.type == "cuda" and trained in ("bf16", "16"):
        return trained
    return "32"


def tolerance(precision: str) -> float:
    """Largest difference in probability expected between two correct runs of one model on one image:
    fp32 kernels differ in summation order only (~1e-6); bf16 keeps 8 bits of mantissa (~4e-3 relative
    per operation, a few 1e-2 after a network); fp16 keeps 11."""
    return {"32": 1e-5, "bf16": 5e-2, "16": 1e-2}[precision]


def resolve_channels_last(choice: bool | None, device: torch.device) -> bool:
    """None (auto): channels_last (NHWC) on CPU and CUDA, the layout oneDNN and cuDNN convolve in natively.

    Measured on this 2-core AVX2 CPU in fp32 (median step, NCHW -> NHWC): training LeNet-5 1.2x, GoogLeNet 1.7x
    faster, ResNet-18/50, VGG-11, AlexNet, U-Net and DeepLabv3 within noise; inference 1.0x (LeNet-5 at 28 px) to
    2.0x (GoogLeNet). On CUDA it is the tensor-core layout (+26-47 % in the anchors). Off elsewhere (MPS).
    """
    return choice if choice is not None else device.type in ("cpu", "cuda")


def seed_everything(seed: int, deterministic: bool) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Set both ways: the flag is process-wide, and a --deterministic run must not leave the next
    # run in the same process (a notebook, the test suite) on deterministic kernels it did not ask
    # for. (r3d_small's NaN under bf16 autocast, once blamed on this flag, came from oneDNN's
    # bf16 conv3d weight gradient with the flag on or off: see video.models.ShortClipConv3d.)
    # Only when it changes: the call imports torch._inductor and torch._dynamo (1.7 s of a 2-core
    # machine's start-up in torch 2.14), which a run that never compiles does not need.
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)
    if deterministic:
        torch.backends.cudnn.benchmark = False


def machine_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a figure or a run needs to say about the machine it came from."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_capability": cpu_capability(),
        "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "platform": platform.platform(),
    }
    dev = torch.device(device) if device is not None else None
    if torch.cuda.is_available() and (dev is None or dev.type == "cuda"):
        index = dev.index if dev is not None and dev.index is not None else 0
        info["gpu_name"] = torch.cuda.get_device_name(index)
        info["cuda_version"] = torch.version.cuda
    return info


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line for logs and tables: 'AMD EPYC 9R14, AVX512, native bf16, 2 threads[, GPU]'."""
    info = info or machine_info()
    parts = [
        info["cpu_model"],
        info["cpu_capability"],
        "native bf16" if info["native_bf16"] else "no native bf16",
        f"{info['torch_threads']} threads",
    ]
    if info.get("gpu_name"):
        parts.append(f"{info['gpu_name']} (CUDA {info.get('cuda_version')})")
    return ", ".join(parts)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
