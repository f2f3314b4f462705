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
import glob
import importlib.metadata
import importlib.util
import os
import platform
import sys

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


def tpu_attached() -> bool:
    """Whether this host has TPU chips (their device files: /dev/accel* or /dev/vfio/N)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"))


def gpu_attached() -> bool:
    """Whether this host has GPUs (NVIDIA's device files /dev/nvidiaN, or AMD's /dev/kfd)."""
    return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd"))


def devices_will_be_cpus() -> bool:
    """Whether JAX will run on CPUs, known before it starts: JAX_PLATFORMS says so, or neither
    a GPU plugin with a GPU nor libtpu with a TPU is here (the plugins alone, installed for
    compiling ahead of time for absent chips, leave JAX on the CPU)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms:
        return platforms.split(",")[0].strip() == "cpu"
    if (importlib.metadata.entry_points(group="jax_plugins")
            or importlib.util.find_spec("jax_plugins")) and gpu_attached():
        return False
    return not (importlib.util.find_spec("libtpu") and tpu_attached())


def configure(config) -> bool:
    """Before JAX starts (main.py, mmjax.tools.benchmark and mmjax.tools.profile_step call it
    first): on a host whose devices will be CPUs, JAX_PLATFORMS=cpu (libtpu then does not try,
    and log its failure to find, a TPU), and keep_freed_memory() when config.reuse_host_memory
    is set. Returns whether that was set."""
    cpus = devices_will_be_cpus()
    if cpus and not os.environ.get("JAX_PLATFORMS"):
        os.environ["JAX_PLATFORMS"] = "cpu"
        if "jax" in sys.modules:  # imported, but no backend started yet: it reads its config
            sys.modules["jax"].config.update("jax_platforms", "cpu")
    return bool(config.get("reuse_host_memory")) and cpus and keep_freed_memory()
