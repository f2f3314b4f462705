"""Keep freed host memory for reuse when the devices are CPUs.

XLA's CPU runtime allocates one temporary buffer per execution of a compiled step, as large as
all its live intermediates (about 440 MB for a small CLIP at batch 64), from a glibc thread
arena. glibc serves an allocation that large from a thread arena with a fresh mmap and returns
it with munmap when freed, so every training step page-faults its whole working set back in
(about 110,000 faults per step, a third of the step on 2 cores). With one arena, no mmap and
no trimming, the freed buffer stays in the process and the next step reuses it; the resident
memory stays at its peak instead of shrinking between steps. Nothing changes on accelerators,
whose buffers are not host memory, and nothing is done off glibc.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to reuse freed memory (see the module docstring); call before the
    CPU backend starts its threads. Returns whether it could (glibc only)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)


def devices_will_be_cpus() -> bool:
    """Whether JAX will run on CPUs, known before it starts: JAX_PLATFORMS says so, or no
    accelerator plugin (CUDA, ROCm, TPU) is installed."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if importlib.metadata.entry_points(group="jax_plugins"):
        return False
    return not any(importlib.util.find_spec(name) for name in ("jax_plugins", "libtpu"))


def configure(config) -> bool:
    """keep_freed_memory() when config.reuse_host_memory is set and the devices will be CPUs;
    main.py, mmjax.tools.benchmark and mmjax.tools.profile_step call it first, before JAX starts its
    CPU
    threads. Returns whether it was set."""
    return bool(config.get("reuse_host_memory")) and devices_will_be_cpus() and \
        keep_freed_memory()
