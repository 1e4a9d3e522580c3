"""Which device and precision a model runs on: what the machine offers, read from torch and /proc/cpuinfo."""

from __future__ import annotations

import functools
import platform
import sys
from pathlib import Path

from datasette_imgsearch.errors import ModelError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(cpuinfo: str) -> bool:
    """Whether a CPU computes bfloat16 natively, from its ``/proc/cpuinfo`` flags: AVX512-BF16 or AMX
    on x86, the BF16 feature on Arm. Without it, bf16 autocast is emulated, and slower than fp32."""
    words = set(cpuinfo.replace(":", " ").split())
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


# The x86 flags with which ONNX Runtime multiplies unsigned bytes by signed ones in 32 bits: VNNI (AVX-512's
# or AVX's) and AMX. Without them its AVX2 kernels add pairs of such products in 16 bits, which can saturate.
EXACT_SIGNED_BYTES = {"avx512_vnni", "avx_vnni", "amx_int8"}
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def exact_signed_bytes(cpuinfo: str | None, machine: str) -> bool:
    """Whether ONNX Runtime's 8-bit products with signed weights are exact on a CPU, from its
    ``/proc/cpuinfo`` (None where there is none) and ``platform.machine()``: always off x86 (Arm's kernels
    widen every product), on x86 only with one of ``EXACT_SIGNED_BYTES``."""
    if machine.lower() not in X86:
        return True
    return cpuinfo is not None and bool(set(cpuinfo.replace(":", " ").split()) & EXACT_SIGNED_BYTES)


@functools.cache
def cpu_multiplies_signed_bytes() -> bool:
    """:func:`exact_signed_bytes` for this machine."""
    try:
        cpuinfo: str | None = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = None
    return exact_signed_bytes(cpuinfo, platform.machine())


def best_precision(device: str) -> str:
    """What ``--precision auto`` means on ``device``: half precision where the hardware has it, else fp32.

    On CUDA, "bf16" runs the model under fp16 autocast; on a CPU, only with native bfloat16 (found
    in ``/proc/cpuinfo``; where that file does not exist, fp32, which is never the slow choice)."""
    if device == "cuda":
        return "bf16"
    return "bf16" if device == "cpu" and cpu_computes_bf16() else "fp32"


@functools.cache
def cpu_computes_bf16() -> bool:
    """:func:`native_bf16` for this machine, False where ``/proc/cpuinfo`` cannot be read."""
    try:
        return native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


# Device nodes through which torch could reach a GPU: NVIDIA's, AMD's (ROCm) and WSL's.
GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def gpu_possible() -> bool:
    """Whether torch might find a GPU here: a Mac (Apple's MPS), Windows (no cheap way to tell), or one of
    ``GPU_NODES``. Where none is, ``auto`` is the CPU, known without importing torch: seconds of every build
    on ONNX Runtime, which otherwise never needs torch."""
    return sys.platform in ("darwin", "win32") or any(Path(node).exists() for node in GPU_NODES)


def resolve_device(device: str) -> str:
    if device == "auto" and not gpu_possible():
        return "cpu"
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA GPU on this machine")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("--device mps was asked for, but this torch build has no Apple MPS support")
    return device
