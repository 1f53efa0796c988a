"""Builds the XDP object with clang as part of the package build.

The object is compiled from bpf/ on every build (never committed) and lands
in hyperion/_bpf/, in place for editable installs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from setuptools import Command, Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def compile_bpf(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT / "bpf"), f"OUT={out_dir}"],
        check=True,
        stdout=sys.stderr,
    )


class BuildBpf(Command):
    """`python setup.py build_bpf`: compile the XDP object into the source tree."""

    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        compile_bpf(ROOT / "src" / "hyperion" / "_bpf")


class BuildPyWithBpf(build_py):
    def run(self) -> None:
        compile_bpf(ROOT / "src" / "hyperion" / "_bpf")
        super().run()
        if not self.editable_mode:
            compile_bpf(Path(self.build_lib) / "hyperion" / "_bpf")


SLOWPATH_DIR = "native/slowpath"
slowpath = Extension(
    "hyperion._slowpath",
    sources=[f"{SLOWPATH_DIR}/{name}.c" for name in ("module", "dns", "packet", "rules", "tcp_stream")],
    depends=[f"{SLOWPATH_DIR}/{name}.h" for name in ("control", "dns", "packet", "rules", "tcp_stream")] + [f"bpf/include/hyperion_{name}.h" for name in ("abi", "parser")],
    # The same ABI and parser headers as the XDP program: one definition of the map layouts,
    # the parser limits and the wire constants.
    include_dirs=["bpf/include", SLOWPATH_DIR],
    libraries=["xdp", "bpf", "hs"],
    extra_compile_args=["-O2", "-Wall", "-Werror", "-std=gnu11"],
)

# The lab's build of the same sources with the fault hook (HYP_FAULT_INJECTION) that `hyperion-lab
# chaos` drives: into the lab package, so the product's extension carries no fault code.
slowpath_faults = Extension(
    "hyperion.lab._slowpath_faults",
    sources=["native/lab/slowpath_faults.c", *(f"{SLOWPATH_DIR}/{name}.c" for name in ("dns", "packet", "rules", "tcp_stream"))],
    depends=[*slowpath.depends, f"{SLOWPATH_DIR}/module.c"],
    include_dirs=slowpath.include_dirs,
    libraries=slowpath.libraries,
    extra_compile_args=slowpath.extra_compile_args,
)

# The workers' seccomp filter (hyperion.privileges.confine_worker), built with libseccomp.
seccomp = Extension(
    "hyperion._seccomp",
    sources=["native/seccomp/seccomp.c"],
    libraries=["seccomp"],
    extra_compile_args=["-O2", "-Wall", "-Werror", "-std=gnu11"],
)

setup(cmdclass={"build_py": BuildPyWithBpf, "build_bpf": BuildBpf}, ext_modules=[slowpath, slowpath_faults, seccomp])
