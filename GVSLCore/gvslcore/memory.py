"""How much memory this machine can still give: what a volume read or a training patch is
checked against before it is tried (a MemoryError deep in ITK or torch is a traceback)."""

from __future__ import annotations

import os


def available_memory() -> int:
    """Bytes of memory free for this process now (Linux MemAvailable, else physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: never refuse for memory
