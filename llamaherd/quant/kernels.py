"""The native CPU kernels (csrc/ggml_kernels.cpp), compiled on first use and cached.

`native()` returns the compiled module, or None where it cannot be built (no compiler,
no AVX2/FMA/F16C, not x86-64, or LLAMAHERD_NO_NATIVE=1); callers then fall back to
pure-torch paths that give the same numbers more slowly. The build takes about a minute
once per machine and torch version; it is cached under torch's extensions directory.
Later processes import the cached library directly when a stamp beside it (a hash of the
source, the flags and the torch version) matches: asking torch's builder to check the
build costs seconds of every start (time to first token).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "ggml_kernels.cpp"
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]


def _cpu_supports_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


NAME = "llamaherd_ggml_kernels"


def _stamp() -> str:
    import torch

    return hashlib.sha256(SOURCE.read_bytes() + repr((FLAGS, torch.__version__)).encode()).hexdigest()


def _import_cached(build_dir: Path, stamp: str):
    """The already-built library when its stamp matches, else None."""
    so, stamp_file = build_dir / f"{NAME}.so", build_dir / f"{NAME}.stamp"
    try:
        if stamp_file.read_text() != stamp or not so.exists():
            return None
    except OSError:
        return None
    import torch  # noqa: F401  (the library links against libtorch, loaded by this import)

    spec = importlib.util.spec_from_file_location(NAME, so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def native():
    """The compiled kernel module, or None when unavailable (see the module docstring)."""
    if os.environ.get("LLAMAHERD_NO_NATIVE") == "1" or not _cpu_supports_avx2():
        return None
    try:
        from torch.utils.cpp_extension import _get_build_directory, load

        build_dir = Path(_get_build_directory(NAME, verbose=False))
        stamp = _stamp()
        module = _import_cached(build_dir, stamp)
        if module is not None:
            return module
        module = load(name=NAME, sources=[str(SOURCE)], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"], verbose=False)
        try:
            (build_dir / f"{NAME}.stamp").write_text(stamp)
        except OSError:
            pass
        return module
    except Exception as e:  # no compiler or headers: fall back, but say so once
        warnings.warn(f"llamaherd: native kernels unavailable ({type(e).__name__}: {e}); using slower torch paths")
        return None
