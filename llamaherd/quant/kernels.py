"""The native CPU kernels (csrc/*.cpp, one file a job; csrc/common.h describes them),
compiled on first use and cached.

`native()` returns the compiled module, or None where it cannot be built (no compiler,
no AVX2/FMA/F16C, not x86-64, or LLAMAHERD_NO_NATIVE=1); callers then fall back to
pure-torch paths that give the same numbers more slowly. The build (its .cpp files compiled
in parallel) takes about a minute once per machine and torch version (72 s on 2 cores);
it is cached where torch caches extensions
($TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions), in a folder named by a hash of
the sources (every .cpp and .h in csrc, names included), the flags and the torch version
(a new build removes all but the newest KEEP_BUILDS of those folders). Later processes
import the cached library directly: asking torch's builder to check the build costs
seconds of every start (time to first token), and even importing it (it imports
setuptools) costs 0.3 s.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import platform
import warnings
from pathlib import Path

CSRC = Path(__file__).with_name("csrc")
BASE_FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fopenmp"]


@functools.cache
def _cpu_flags() -> frozenset[str]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return frozenset()
    try:
        return frozenset(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return frozenset()


def _cpu_supports_avx2() -> bool:
    return {"avx2", "fma", "f16c"} <= _cpu_flags()


# Where the CPU has AVX-VNNI (Intel since Alder Lake and Sapphire Rapids, AMD since Zen 5) the
# integer kernels add 4 byte products into int32 in one instruction, not three (packed_layout.h
# dot4_add); the flags are part of the build's hash, so each kind of CPU gets its own build.
# Where it has AVX-512 with VNNI (Intel since Ice Lake, AMD since Zen 4) the packed products
# take two groups of 8 weight rows a register (packed_layout.h Lanes16): on a 2-core Xeon VM,
# every layer of TinyLlama-shaped Q4_0 with 8 rows of x went 6.0 -> 8.5 GB/s (three terms)
# and 12.1 -> 14.4 (one term); batch-8 decoding 1.36x faster, one row about the same.
AVX512_FLAGS = {"avx512f": "-mavx512f", "avx512bw": "-mavx512bw", "avx512vl": "-mavx512vl", "avx512_vnni": "-mavx512vnni"}
# Where it also has AMX (Intel since Sapphire Rapids), the packed products of many rows of x
# (batched decoding, prefill) run on its tiles (csrc/amx_tiles.h); Q4_K's take a byte-table
# lookup from AVX512-VBMI, which every CPU with AMX has.
AMX_FLAGS = {"amx_tile": "-mamx-tile", "amx_int8": "-mamx-int8", "avx512vbmi": "-mavx512vbmi"}
FLAGS = (BASE_FLAGS + (["-mavxvnni"] if "avx_vnni" in _cpu_flags() else [])
         + (list(AVX512_FLAGS.values()) if set(AVX512_FLAGS) <= _cpu_flags() else [])
         + (list(AMX_FLAGS.values()) if set(AVX512_FLAGS) | set(AMX_FLAGS) <= _cpu_flags() else []))


NAME = "llamaherd_ggml_kernels"


def _sources() -> list[Path]:
    """The files compiled into the module, sorted by name."""
    return sorted(CSRC.glob("*.cpp"))


def _stamp() -> str:
    """A hash of every source and header in csrc (sorted by name, names included), the flags
    and the torch version: a change to any of them builds anew."""
    import torch

    h = hashlib.sha256()
    for path in sorted((p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h")), key=lambda p: p.name):
        data = path.read_bytes()
        h.update(f"{path.name}\0{len(data)}\0".encode())
        h.update(data)
    h.update(repr((FLAGS, torch.__version__)).encode())
    return h.hexdigest()


def _build_dir(stamp: str) -> Path:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or Path.home() / ".cache" / "torch_extensions"
    return Path(root) / f"{NAME}-{stamp[:16]}"


def _import_cached(build_dir: Path):
    """The already-built library in build_dir, else None."""
    so = build_dir / f"{NAME}.so"
    if not so.exists():
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
        build_dir = _build_dir(_stamp())
        module = _import_cached(build_dir)
        if module is not None:
            return module
        from torch.utils.cpp_extension import load

        build_dir.mkdir(parents=True, exist_ok=True)
        module = load(name=NAME, sources=[str(p) for p in _sources()], extra_cflags=FLAGS, extra_ldflags=["-fopenmp"],
                      build_directory=str(build_dir), verbose=False)
        _remove_old_builds(build_dir)
        return module
    except Exception as e:  # no compiler or headers: fall back, but say so once
        warnings.warn(f"llamaherd: native kernels unavailable ({type(e).__name__}: {e}); using slower torch paths")
        return None


KEEP_BUILDS = 3  # builds kept per cache folder: other versions (venvs, branches) reuse theirs


def _remove_old_builds(current: Path) -> None:
    """Each source change builds into a new folder: keep the newest few, remove the rest (a
    process still using a removed library keeps its mapped copy)."""
    import shutil

    builds = sorted((p for p in current.parent.glob(f"{NAME}-*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in [p for p in builds if p != current][KEEP_BUILDS - 1:]:
        shutil.rmtree(old, ignore_errors=True)
