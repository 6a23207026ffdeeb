"""Profile training time: every layer x kind x attribute probed at once vs one probe at a time.

    python benchmarks/probe_speed.py                  # 1024 prompts, the testbed's 16 layers, 3 attributes
    python benchmarks/probe_speed.py --prompts 256

Features have the testbed's default-reduction sizes (self 64x64, cross 64x16 per layer, a
text embedding), labels the probing set's class counts (16/11/8), 10 templates. Both arms run
in this process with the same settings: the full profile as `melodia probe` runs it (batched,
MLP + linear, control tasks, 5 grouped folds), and the same work one probe at a time, timed on
a few layers and scaled to all of them. Prints wall times and their ratio; the issue's target
is a full profile under 60 s on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from probing.probes import ProbeSettings, probe_features

CLASSES = {"instrument": 16, "style": 11, "mood": 8}


def features(n_prompts: int, n_layers: int, seed: int = 0) -> tuple[dict[str, np.ndarray], dict, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = {a: [str(v) for v in rng.integers(0, c, n_prompts)] for a, c in CLASSES.items()}
    maps = {}
    for layer in range(1, n_layers + 1):
        maps[f"self:{layer}"] = rng.random((n_prompts, 64 * 64), dtype=np.float32)
        maps[f"cross:{layer}"] = rng.random((n_prompts, 64 * 16), dtype=np.float32)
    maps["text"] = rng.normal(size=(n_prompts, 256)).astype(np.float32)
    return maps, labels, np.arange(n_prompts) % 10


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--sample-layers", type=int, default=2, help="layers timed one probe at a time")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ProbeSettings()
    maps, labels, groups = features(args.prompts, args.layers)
    batched = timed(lambda: probe_features(maps, labels, groups, settings))
    sample = [f"{kind}:{layer}" for layer in range(1, args.sample_layers + 1) for kind in ("self", "cross")]
    one_by_one = sum(timed(lambda name=name: probe_features({name: maps[name]}, labels, groups, settings))
                     for name in sample) * len(maps) / len(sample)
    print(f"{args.prompts} prompts x {len(maps)} feature sets (16 layers x self/cross + text) x {len(CLASSES)} "
          f"attributes x (MLP + linear + control tasks), {settings.folds} grouped folds, {args.threads} threads")
    print(f"full profile, batched:        {batched:7.1f} s   (target < 60 s: {batched / 60:.2f}x of target)")
    print(f"one probe at a time (scaled): {one_by_one:7.1f} s   from {len(sample)} feature sets")
    print(f"speed-up of batching: {one_by_one / batched:.1f}x")


if __name__ == "__main__":
    main()
