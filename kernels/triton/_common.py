"""Shared helpers of the Triton kernels: argument checks, launch sizing and device facts.

Every public wrapper validates its inputs here before launching, so a wrong dtype, shape or
device fails in Python with a message that names the argument, not inside a kernel.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterable, Iterator

import torch
import triton
import triton.language as tl

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
# What the wrappers assume when there is no GPU to ask (interpreter runs): an H100 SXM.
DEFAULT_NUM_SMS = 132


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _fix_interpreter_for_numpy_2_4() -> None:
    """Lets `range(tensor_lo, tensor_hi)` loops run in Triton 3.6's interpreter on NumPy >= 2.4.

    The interpreter keeps scalars as 1-element arrays and converts them with int(), which
    NumPy 2.4 rejects (triton-lang/triton#9171, fixed upstream after 3.6). We wrap its tensor
    patching to convert through `.reshape(-1)[0]`; compiled (GPU) runs are untouched.
    """
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_localserve_numpy_fix", False):
        return

    def patch_lang_tensor(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor._localserve_numpy_fix = True  # type: ignore[attr-defined]
    interpreter._patch_lang_tensor = patch_lang_tensor


if interpreting():
    _fix_interpreter_for_numpy_2_4()


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_tensor(name: str, t: object, *, ndim: int | None = None,
                 dtypes: Iterable[torch.dtype] | None = None) -> torch.Tensor:
    """Raises TypeError/ValueError naming `name` unless `t` is a tensor of that rank and dtype."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
            raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")
    return t


def check_same_device(**tensors: torch.Tensor) -> torch.device:
    """All tensors on one device, and one that Triton can run on here; returns it."""
    devices = {name: t.device for name, t in tensors.items()}
    first_name, device = next(iter(devices.items()))
    for name, dev in devices.items():
        if dev != device:
            raise ValueError(f"{name} is on {dev} but {first_name} is on {device}; "
                             "all tensors must be on one device")
    if interpreting():
        if device.type != "cpu":
            raise ValueError(f"TRITON_INTERPRET=1 runs kernels on CPU tensors, got {device}")
    elif device.type != "cuda":
        raise ValueError(f"Triton kernels need CUDA/ROCm tensors (got {device}); "
                         "set TRITON_INTERPRET=1 to run them on CPU tensors")
    return device


def check_last_dim_contiguous(name: str, t: torch.Tensor) -> None:
    if t.dim() and t.stride(-1) != 1 and t.shape[-1] > 1:
        raise ValueError(f"{name} must be contiguous in its last dimension "
                         f"(stride {t.stride(-1)} given)")


class _Override:
    """A module-wide setting that a context manager changes for its duration (tests, A/B
    benchmarks and cross-compilation set launch choices this way)."""

    def __init__(self, default: object = None) -> None:
        self.value = default

    @contextlib.contextmanager
    def set(self, value: object) -> Iterator[None]:
        previous, self.value = self.value, value
        try:
            yield
        finally:
            self.value = previous


_ARCH = _Override()        # a GPU generation to choose launches for, or None: the real one
_PDL = _Override()         # True/False: force PDL on/off, None: LOCALSERVE_TRITON_PDL decides
_PDL_HERE = _Override(False)  # launches of a span that asks for PDL where the GPU has it
_POISON = _Override(False)  # NaN-filled kernel outputs


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.cache
def _cuda_num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors (NVIDIA) or compute units (AMD) of `device`."""
    if device.type == "cuda":
        return _cuda_num_sms(_device_index(device))
    return DEFAULT_NUM_SMS


@functools.cache
def _gpu_arch(index: int) -> str:
    if torch.version.hip is not None:  # "gfx942:sramecc+:xnack-" -> "gfx942"
        return torch.cuda.get_device_properties(index).gcnArchName.split(":")[0]
    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


def gpu_arch(device: torch.device) -> str | None:
    """The GPU generation `device` is on: "sm_90", "sm_89", "sm_75" (NVIDIA), "gfx942",
    "gfx1100" (AMD)..., or None under the interpreter.

    Tile sizes are tuned for Hopper (sm_90, whose wgmma keeps accumulators in another layout);
    other generations get tiles that fit their registers (`test_triton_compile.py` compiles
    every launch for sm_90, sm_120, sm_89, sm_86, sm_75, gfx942 and gfx1100 and checks for
    spills and shared memory)."""
    if _ARCH.value is not None:
        return _ARCH.value
    if device.type != "cuda" or interpreting():
        return None
    return _gpu_arch(_device_index(device))


def nvidia_capability(arch: str | None) -> tuple[int, int] | None:
    """(major, minor) of an "sm_XY" arch, None for AMD and the interpreter."""
    if arch is None or not arch.startswith("sm_"):
        return None
    return int(arch[3:-1]), int(arch[-1])


def rdna(arch: str | None) -> bool:
    """AMD's consumer GPUs (gfx10xx-gfx12xx, wave32) as opposed to CDNA (gfx9xx, wave64)."""
    return arch is not None and arch.startswith("gfx1")


# Shared memory (bytes) one program may use, for `arch_override` targets (opt-in maximum per
# block: H100/H200 227 KB, RTX 30xx/40xx/50xx 99 KB, Turing 64 KB, AMD LDS 64 KB per workgroup).
_SHARED_MEMORY = {"sm_90": 232_448, "sm_120": 101_376, "sm_89": 101_376, "sm_86": 101_376,
                  "sm_80": 166_912, "sm_75": 65_536}


@functools.cache
def _device_shared_memory(index: int) -> int:
    from triton.runtime import driver

    return driver.active.utils.get_device_properties(index)["max_shared_mem"]


def shared_memory_limit(device: torch.device) -> int:
    """Bytes of shared memory (LDS on AMD) one program may use on `device`: Triton refuses to
    launch a kernel that needs more. Queried from the GPU; for an `arch_override` target from
    the table above (AMD and unknown ones: 64 KB); the interpreter has no limit to speak of."""
    if _ARCH.value is not None:
        return _SHARED_MEMORY.get(_ARCH.value, 65_536)
    if device.type != "cuda" or interpreting():
        return _SHARED_MEMORY["sm_90"]
    return _device_shared_memory(_device_index(device))


def arch_override(arch: str) -> contextlib.AbstractContextManager[None]:
    """While active, the wrappers choose their launches as for this GPU generation (to record
    launches and compile them for that target, or to run its tiles on another GPU)."""
    return _ARCH.set(arch)


_PDL_ON = {"USE_PDL": True, "launch_pdl": True}
_PDL_OFF = {"USE_PDL": False}


def pdl_launch(device: torch.device) -> dict[str, bool]:
    """The launch keywords for programmatic dependent launch (PDL) on `device`.

    With PDL a kernel may be launched while the one before it in the stream is finishing; it
    waits in `pdl_wait` before touching memory. At decode most kernels run a few microseconds,
    so the gap between two launches is a large share of each one. NVIDIA Hopper (sm_90) and
    newer only: AMD, older GPUs and the interpreter launch plainly (the HIP backend rejects the
    `launch_pdl` option, so it is passed only where it applies).

    Where: launches inside `pdl_where_supported()` (the cuda runner's decode graphs of a few
    rows, chains of short memory-bound kernels), or every launch with LOCALSERVE_TRITON_PDL=1;
    LOCALSERVE_TRITON_PDL=0 turns it off. Measured on an H100 (docs/benchmarks.md): batch-1
    decode of the 8B shapes about 0.5% faster on average over the A/B pairs of sessions 6 and
    9, while the many-sequence workloads (b) and (c) were unchanged in session 6 and 0.5%
    slower in session 9's pair, their kernels sitting next to cuBLAS GEMMs that launch plainly.
    Correct there: a 32-layer chain of PDL kernels replayed in a CUDA graph matches eager
    launches (test_triton_pdl.py); every sm_90/sm_120 build starts with the wait
    (test_triton_compile.py). `pdl_override` forces it either way (A/B benchmarks, compile
    tests).
    """
    if _PDL.value is not None:
        return _PDL_ON if _PDL.value else _PDL_OFF
    setting = os.environ.get("LOCALSERVE_TRITON_PDL")
    if not (setting == "1" or (_PDL_HERE.value and setting != "0")):
        return _PDL_OFF
    capability = nvidia_capability(gpu_arch(device))  # None: AMD, the interpreter, a CPU
    return _PDL_ON if capability is not None and capability >= (9, 0) else _PDL_OFF


def pdl_where_supported() -> contextlib.AbstractContextManager[None]:
    """While active, wrappers launch with PDL on GPUs that have it (unless
    LOCALSERVE_TRITON_PDL=0)."""
    return _PDL_HERE.set(True)


def pdl_override(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """While active, every wrapper launches with (or without) PDL whatever the device and
    LOCALSERVE_TRITON_PDL say. Forced on, the launches run only on sm_90+ GPUs (or are only
    recorded, to compile them for sm_90)."""
    return _PDL.set(enabled)


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    """First thing in every kernel launched through `pdl_launch`: wait until the previous
    kernel's writes are visible (griddepcontrol.wait), then let the next kernel launch; the
    next one thus starts only after every program here got past this wait, so a chain of PDL
    launches never has more than two kernels in flight. Without PDL: nothing."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()


def poisoned_outputs() -> contextlib.AbstractContextManager[None]:
    """While active, every buffer the wrappers allocate starts filled with NaN (tests only).

    An element a kernel forgets to write then shows up as NaN in the result, including the
    split-KV partial buffers the reduction reads.
    """
    return _POISON.set(True)


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """torch.empty for kernel outputs; inside `poisoned_outputs()` NaN-filled (integers: -1,
    never a valid index)."""
    t = torch.empty(shape, dtype=dtype, device=device)
    if _POISON.value:
        t.fill_(float("nan") if dtype.is_floating_point else -1)
    return t
