"""Computes the package list for the remapped folders and builds the optional C extension.

`backends/ kernels/ quant/ tui/` ship as `localserve.<name>`; setuptools does not discover
packages under a remapped folder, so we walk the roots for `__init__.py` ourselves.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOTS = {"localserve": "localserve", "backends": "localserve.backends",
         "kernels": "localserve.kernels", "quant": "localserve.quant", "tui": "localserve.tui"}


def find_packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    package_dir: dict[str, str] = {}
    for folder, name in ROOTS.items():
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
            if "__init__.py" not in filenames:
                continue
            rel = os.path.relpath(dirpath, folder)
            pkg = name if rel == "." else name + "." + rel.replace(os.sep, ".")
            packages.append(pkg)
            package_dir[pkg] = dirpath
    return packages, package_dir


def cpu_kernels_extension() -> list[Extension]:
    """The C CPU kernels as a plain shared library (no Python C API; loaded with ctypes).

    Flags and the source hash come from kernels/cpu/_build.py, which also builds the same
    library on first use when this optional build was skipped or failed.
    """
    if os.name == "nt":  # GCC/Clang attributes; Windows users get the runtime build or torch
        return []
    path = os.path.join("kernels", "cpu", "_build.py")
    spec = importlib.util.spec_from_file_location("_localserve_cpu_build", path)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    here = os.path.dirname(os.path.abspath(__file__))
    return [Extension(
        "localserve.kernels.cpu._lscpu",
        sources=[os.path.relpath(f, here) for f in build.source_files()],
        extra_compile_args=build.CFLAGS,
        define_macros=[("LS_BUILD_ID", f'"{build.source_hash()}"')],
        libraries=["pthread", "m"],
        optional=True,
    )]


class OptionalBuildExt(build_ext):
    """A failed C build must never fail `pip install`: warn and ship without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, bad toolchain, ...
            print(f"warning: skipping the C CPU kernels ({e}); they build on first use "
                  "if a compiler appears, else the CPU backend uses torch", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            print(f"warning: could not build {ext.name}: {e}", file=sys.stderr)


packages, package_dir = find_packages()
setup(packages=packages, package_dir=package_dir, ext_modules=cpu_kernels_extension(),
      cmdclass={"build_ext": OptionalBuildExt})
