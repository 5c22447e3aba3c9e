"""How much of a memory mapping is resident, for tests of page release (Linux)."""

from __future__ import annotations


def resident_kib(address: int) -> int | None:
    """Rss of the mapping holding `address`, from /proc/self/smaps (None off Linux)."""
    try:
        lines = open("/proc/self/smaps").read().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0]
        if "-" in head and ":" not in head:
            lo, hi = (int(v, 16) for v in head.split("-"))
            inside = lo <= address < hi
        elif inside and head == "Rss:":
            return int(line.split()[1])
    return None
