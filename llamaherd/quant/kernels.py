"""The native CPU kernels (csrc/ggml_kernels.cpp), compiled on first use and cached.

`native()` returns the compiled module, or None where it cannot be built (no compiler,
no AVX2/FMA/F16C, not x86-64, or LLAMAHERD_NO_NATIVE=1); callers then fall back to
pure-torch paths that give the same numbers more slowly. The build takes about a minute
once per machine and torch version; it is cached under torch's extensions directory.
"""

from __future__ import annotations

import functools
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


@functools.cache
def native():
    """The compiled kernel module, or None when unavailable (see the module docstring)."""
    if os.environ.get("LLAMAHERD_NO_NATIVE") == "1" or not _cpu_supports_avx2():
        return None
    try:
        from torch.utils.cpp_extension import load

        return load(name="llamaherd_ggml_kernels", sources=[str(SOURCE)], extra_cflags=FLAGS,
                    extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # no compiler or headers: fall back, but say so once
        warnings.warn(f"llamaherd: native kernels unavailable ({type(e).__name__}: {e}); using slower torch paths")
        return None
