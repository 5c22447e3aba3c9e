"""Memory-mapped weight files: letting go of the pages of tensors that were copied."""

from __future__ import annotations

import mmap


def release_pages(mapping: mmap.mmap, offset: int, nbytes: int) -> None:
    """Drop this process's resident pages of bytes [offset, offset + nbytes) of a file map, once
    they were copied elsewhere (the whole pages inside the range only). They are page cache,
    reclaimable, but count in the process's RSS until then. Views stay valid: a later read
    faults the pages back in from the page cache."""
    start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
    end = (offset + nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if end > start and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED, start, end - start)
