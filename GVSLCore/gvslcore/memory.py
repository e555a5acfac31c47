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


def keep_freed_memory(trim_threshold: int = 1 << 30, top_pad: int = 64 << 20) -> bool:
    """Ask glibc's allocator to keep freed memory for the next allocation instead of handing it back
    to the system at once; True when it took the settings (Linux with glibc), False elsewhere.

    A registration or a segmentation allocates and frees the same few large arrays hundreds of times.
    By default glibc unmaps a freed block above its (adaptive) mmap threshold and trims the heap's
    top, so each new array page-faults its memory in again. Measured in fresh processes on the chest
    CTA pair of benchmarks/register_speed.py (two cores): the network's pass 1.8 -> 1.5 s and the
    writing 1.6 -> 1.4 s. Peak memory is unchanged: the kept blocks are the ones the next step
    reuses. A process-wide setting: the command line calls it, a library caller (Slicer) does not.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    # glibc accepts at most 32 MiB here (HEAP_MAX_SIZE / 2 on 64-bit); larger blocks are still mapped.
    ok = mallopt(m_mmap_threshold, 32 << 20) == 1
    ok = mallopt(m_trim_threshold, int(trim_threshold)) == 1 and ok
    return mallopt(m_top_pad, int(top_pad)) == 1 and ok
