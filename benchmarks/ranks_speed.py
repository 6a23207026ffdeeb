"""Two capture ranks on one machine vs one process: do the ranks share the cores or fight over them?

    python benchmarks/ranks_speed.py [--prompts 16] [--steps 10]

Runs `melodia capture` of the same testbed prompts three ways, in one run, as separate processes
(RANK / WORLD_SIZE set by hand, as a shard launcher does):
  one      one process, torch's default threads (all cores)
  shared   two ranks, melodia's default: the cores divided between them (probing/threads.py)
  fight    two ranks, each with all cores' threads (what torch does when nobody divides them)
Prints wall seconds (launch to the last exit) and the ratios one / shared and fight / shared.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from probing.threads import available_cores

REPO = Path(__file__).resolve().parents[1]
INSTRUMENTS = ["piano", "violin", "flute", "trumpet", "organ", "harp", "cello", "clarinet"]


def run(prompts: Path, store: Path, steps: int, world: int, threads: int | None) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MELODIA_THREADS")}
    env["PYTHONPATH"] = str(REPO)
    if threads is not None:
        env["MELODIA_THREADS"] = str(threads)
    command = [sys.executable, "-m", "editing.cli", "capture", "--prompts", str(prompts), "--store", str(store),
               "--steps", str(steps)]
    start = time.perf_counter()
    procs = [subprocess.Popen(command, env={**env, "RANK": str(r), "WORLD_SIZE": str(world)}, cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in range(world)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"capture failed:\n{err}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cores = available_cores()
    with tempfile.TemporaryDirectory() as folder:
        prompts = Path(folder, "prompts.txt")
        prompts.write_text("\n".join(f"a calm melody played on {INSTRUMENTS[i % 8]}, take {i}"
                                     for i in range(args.prompts)) + "\n")
        times = {name: run(prompts, Path(folder, f"{name}.zarr"), args.steps, world, threads)
                 for name, world, threads in [("one", 1, None), ("shared", 2, None), ("fight", 2, cores)]}
    print(f"{args.prompts} testbed prompts, {args.steps} steps, {cores} cores")
    for name, seconds in times.items():
        print(f"  {name:7s} {seconds:7.1f} s")
    print(f"one / shared: {times['one'] / times['shared']:.2f}x (> 1: two ranks finish sooner than one process)")
    print(f"fight / shared: {times['fight'] / times['shared']:.2f}x (the cost of ranks that do not divide the cores)")


if __name__ == "__main__":
    main()
