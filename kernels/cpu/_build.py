"""Compiles the C kernels into a shared library with the system C compiler.

Used twice: by `setup.py` (the optional packaged build) and by `_loader.py` on first use when
no packaged library matches the sources (editable installs, a wheel built without a compiler).
Stdlib only, so `setup.py` can load this file by path before the package is importable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CFLAGS = ["-O3", "-std=c11", "-fPIC", "-ffp-contract=off", "-fvisibility=hidden",
          "-Wall", "-Wextra"]
LIBS = ["-lpthread", "-lm"]


def source_files(folder: str | None = None) -> list[str]:
    """The C sources of the library (headers excluded), sorted for a stable hash."""
    folder = folder or HERE
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.startswith("ls_") and f.endswith(".c"))


def source_hash(folder: str | None = None) -> str | None:
    """Hash of every source and header plus the flags; None if the sources are not shipped."""
    folder = folder or HERE
    names = sorted(f for f in os.listdir(folder)
                   if f.startswith("ls_") and f.endswith((".c", ".h")))
    if not names:
        return None
    h = hashlib.sha256(" ".join(CFLAGS).encode())
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def find_compiler() -> str | None:
    """$CC if set, else cc / gcc / clang from PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def compile_library(out_path: str, compiler: str | None = None) -> None:
    """Builds the library at out_path atomically (concurrent builders cannot see a partial file).

    Raises RuntimeError with the compiler's output on failure.
    """
    cc = compiler or find_compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set CC or install cc/gcc/clang)")
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out_path) or ".")
    os.close(fd)
    cmd = [cc, *CFLAGS, f'-DLS_BUILD_ID="{source_hash()}"', "-shared", "-o", tmp,
           *source_files(), *LIBS]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling the CPU kernels failed:\n{' '.join(cmd)}\n"
                               f"{proc.stdout}{proc.stderr}")
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":  # python kernels/cpu/_build.py OUT.so
    compile_library(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "liblscpu.so"))
