"""Torch threads per process: several melodia processes on one machine must not fight over its cores.

torch starts with one thread per core in every process; two ranks on 2 cores then each run 2
threads that spin against each other (measured: 4.5x the CPU for the same capture). Under a
multi-process launch (torchrun, accelerate, or RANK / WORLD_SIZE set by hand) each process takes
its share of the cores, unless the user chose: ``MELODIA_THREADS`` or ``OMP_NUM_THREADS`` (not the
1 that torchrun sets when the user set nothing).

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
from pathlib import Path

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


def parent_environment() -> dict[str, str] | None:
    """The environment the parent process was started with (Linux /proc), or None where it cannot be read."""
    try:
        raw = Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except OSError:
        return None
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _set_by_torchrun(env: Mapping[str, str], parent_env: Mapping[str, str] | None) -> bool:
    """torchrun exports OMP_NUM_THREADS=1 to its workers when its own environment has none: that 1 is
    torchrun's default, not the user's choice (the agent's start-up environment shows which)."""
    return (bool(env.get("TORCHELASTIC_RUN_ID")) and env.get("OMP_NUM_THREADS") == "1"
            and parent_env is not None and "OMP_NUM_THREADS" not in parent_env)


def threads_for_process(env: Mapping[str, str] = os.environ, cores: int | None = None,
                        parent_env: Mapping[str, str] | None = None) -> int | None:
    """Threads this process should give torch, or None to leave them as they are.

    ``MELODIA_THREADS`` wins; a set ``OMP_NUM_THREADS`` is the user's (torch reads it itself: None),
    except the 1 torchrun sets by default; otherwise, with several processes of one launch on this
    machine (``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE``), the cores divided among them, at least 1;
    alone: None. `parent_env` (default: read from /proc) tells torchrun's default from the user's.
    """
    if env.get("MELODIA_THREADS"):
        return _positive("MELODIA_THREADS", env["MELODIA_THREADS"])
    if parent_env is None and env is os.environ:
        parent_env = parent_environment()
    if env.get("OMP_NUM_THREADS") and not _set_by_torchrun(env, parent_env):
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
    if threads is not None:  # an explicit count: later calls (capture, bench) must keep it
        os.environ["MELODIA_THREADS"] = str(_positive("threads", str(threads)))
    threads = threads_for_process()
    if threads is None:
        return None
    os.environ["OMP_NUM_THREADS"] = str(threads)  # BLAS libraries loaded later read it
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads
