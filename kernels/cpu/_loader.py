"""Finds, builds if needed, and loads the C kernel library; declares its ctypes signatures.

Order: the library packaged by setup.py next to this file, if it was built from these sources;
else a cached build in ~/.cache/localserve (or $LOCALSERVE_CACHE_DIR) keyed by the source hash;
else compile one now with the system `cc`. With no compiler, one warning is logged and
`load()` returns None so the caller can fall back to torch.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import platform
import threading

from localserve.kernels.cpu import _build

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None

P, N, F, I64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_float, ctypes.c_int64  # N: C int
SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "ls_gguf_matmul": (N, [P, N, N, P, N, N, P]),
    "ls_gguf_matmul_multi": (N, [P, N, N, N, P, P, P, P]),
    "ls_paged_attention": (N, [P, N, N, N, P, P, N, N, N, N, P, N, P, P, N, F, N, F, P]),
    "ls_write_kv": (N, [P, P, N, P, P, N, N, N, N, N, N, P]),
    "ls_rms_norm": (None, [P, P, P, P, P, N, N, F, F]),
    "ls_act_and_mul": (N, [P, P, N, N, N]),
    "ls_rotary": (N, [P, P, P, N, N, N, P, N, I64]),
    "ls_decoder_layer": (N, [P, P, P, P, N]),
    "ls_embedding": (N, [P, N, P, N, N, I64, F, P]),
    "ls_dequantize_row": (N, [P, N, N, P]),
    "ls_set_isa": (N, [N]),
    "ls_get_isa": (N, []),
    "ls_best_isa": (N, []),
    "ls_set_num_threads": (None, [N]),
    "ls_get_num_threads": (N, []),
    "ls_build_id": (ctypes.c_char_p, []),
}


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def _cache_dir() -> str:
    root = os.environ.get("LOCALSERVE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "localserve")
    return os.path.join(root, "cpu_kernels")


def _try_load(path: str, want: str | None) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(path)
        lib.ls_build_id.restype = ctypes.c_char_p
        if want is not None and lib.ls_build_id().decode() != want:
            return None  # built from other sources: stale in an editable checkout
        return _declare(lib)
    except (OSError, AttributeError) as e:
        logger.debug("cannot load %s: %s", path, e)
        return None


def _load() -> ctypes.CDLL | None:
    global _error
    want = _build.source_hash()
    for path in sorted(glob.glob(os.path.join(_build.HERE, "_lscpu*.so"))):
        lib = _try_load(path, want)
        if lib is not None:
            return lib
    if want is None:
        _error = "no packaged CPU kernel library and no C sources to build one"
        return None
    cached = os.path.join(_cache_dir(), f"liblscpu-{want}-{platform.machine()}.so")
    if os.path.exists(cached):
        lib = _try_load(cached, want)
        if lib is not None:
            return lib
    if _build.find_compiler() is None:
        _error = "no C compiler (cc/gcc/clang) and no prebuilt library"
        return None
    try:
        _build.compile_library(cached)
    except (RuntimeError, OSError) as e:
        _error = str(e)
        return None
    return _try_load(cached, want)


def load() -> ctypes.CDLL | None:
    """The loaded library, or None (logged once) when it cannot be had."""
    global _lib, _tried
    if _tried:
        return _lib
    with _lock:
        if not _tried:
            _lib = _load()
            _tried = True
            if _lib is None:
                logger.warning("localserve C CPU kernels unavailable (%s); falling back to torch",
                               (_error or "unknown error").splitlines()[0])
    return _lib


def error() -> str | None:
    """Why load() returned None (full compiler output included)."""
    return _error
