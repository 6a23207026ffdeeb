"""Torch threads per process: several melodia processes on one machine must not fight over its cores.

torch starts with one thread per core in every process; two ranks on 2 cores then each run 2
threads that spin against each other (measured: 4.5x the CPU for the same capture). Under a
multi-process launch (torchrun, accelerate, or RANK / WORLD_SIZE set by hand) each process takes
its share of the cores, unless the user chose: ``MELODIA_THREADS`` or ``OMP_NUM_THREADS``.

Examples:
    >>> threads_for_process({"WORLD_SIZE": "2"}, cores=16)
    8
    >>> threads_for_process({"WORLD_SIZE": "2", "OMP_NUM_THREADS": "3"}, cores=16) is None  # the user's choice
    True
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from probing.errors import MelodiaError


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _positive(name: str, value: str) -> int:
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise MelodiaError(f"{name} must be a positive integer, got {value!r}")
    return threads


def threads_for_process(env: Mapping[str, str] = os.environ, cores: int | None = None) -> int | None:
    """Threads this process should give torch, or None to leave them as they are.

    ``MELODIA_THREADS`` wins; a set ``OMP_NUM_THREADS`` is the user's (torch reads it itself: None);
    otherwise, with several processes of one launch on this machine (``LOCAL_WORLD_SIZE``, else
    ``WORLD_SIZE``), the cores divided among them, at least 1; alone: None.
    """
    if env.get("MELODIA_THREADS"):
        return _positive("MELODIA_THREADS", env["MELODIA_THREADS"])
    if env.get("OMP_NUM_THREADS"):
        return None
    processes = env.get("LOCAL_WORLD_SIZE") or env.get("WORLD_SIZE") or "1"
    processes = _positive("LOCAL_WORLD_SIZE" if env.get("LOCAL_WORLD_SIZE") else "WORLD_SIZE", processes)
    if processes == 1:
        return None
    return max(1, (cores or available_cores()) // processes)


def configure_threads(threads: int | None = None) -> int | None:
    """Apply `threads` (default: `threads_for_process()`) to torch and to libraries not yet loaded
    (``OMP_NUM_THREADS``); returns what was set, None when nothing was.

    Examples:
        >>> configure_threads(2)
        2
    """
    threads = threads_for_process() if threads is None else _positive("threads", str(threads))
    if threads is None:
        return None
    os.environ["OMP_NUM_THREADS"] = str(threads)  # BLAS libraries loaded later read it
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
