"""Computes the package list for the remapped folders and builds the optional C extension.

`backends/ kernels/ quant/ tui/` ship as `localserve.<name>`; setuptools does not discover
packages under a remapped folder, so we walk the roots for `__init__.py` ourselves.
"""

from __future__ import annotations

import os

from setuptools import setup

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


packages, package_dir = find_packages()
setup(packages=packages, package_dir=package_dir)
