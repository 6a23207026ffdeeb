"""Zarr write throughput of capture vs raw `np.save` of the same arrays (target >= 0.5).

    python benchmarks/zarr_throughput.py [--prompts 64]

The arrays are the testbed's full capture (32 modules, 10 steps, default reduction) filled with
attention-like values; both writers store the same bytes (fp16), the store with its sharding and
blosc-zstd compression, np.save as one raw .npy per array and prompt. Ratio = Zarr MB/s / np.save MB/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from probing.store import ArraySpec, CaptureStore


def testbed_like_specs(steps: int = 10) -> list[ArraySpec]:
    grids = [(16, 4)] * 2 + [(16, 4)] * 2 + [(8, 2)] * 2 + [(8, 2)] + [(8, 2)] * 3 + [(16, 4)] * 3 + [(16, 4)] * 3
    specs = []
    for layer, (t, f) in enumerate(grids, start=1):
        q = t * f
        specs.append(ArraySpec(f"layer{layer}/self", (steps, q, q), ("step", "query", "key")))
        specs.append(ArraySpec(f"layer{layer}/cross", (steps, q, 16), ("step", "query", "key_text")))
    return specs


def attention_like(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    logits = rng.standard_normal(shape).astype(np.float32) * 3
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return (probs / probs.sum(-1, keepdims=True)).astype(np.float16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    specs = testbed_like_specs()
    maps = [{s.name: attention_like(s.shape, rng) for s in specs} for _ in range(4)]  # cycled over prompts
    total_mb = args.prompts * sum(a.nbytes for a in maps[0].values()) / 2**20
    with tempfile.TemporaryDirectory() as folder:
        store = CaptureStore.create(f"{folder}/s.zarr", prompts=[f"p{i}" for i in range(args.prompts)], specs=specs,
                                    identity={"benchmark": 1})
        start = time.perf_counter()
        for i in range(args.prompts):
            store.write_prompt(i, maps[i % 4])
        zarr_s = time.perf_counter() - start
        raw = Path(folder, "npy")
        raw.mkdir()
        start = time.perf_counter()
        for i in range(args.prompts):
            for name, array in maps[i % 4].items():
                np.save(raw / f"{i}_{name.replace('/', '_')}.npy", array)
        npy_s = time.perf_counter() - start
        on_disk = sum(p.stat().st_size for p in Path(folder, "s.zarr").rglob("*") if p.is_file()) / 2**20
    print(f"{args.prompts} prompts, {len(specs)} arrays each, {total_mb:.1f} MB of fp16 maps")
    print(f"zarr store: {zarr_s:.2f} s ({total_mb / zarr_s:.1f} MB/s, {on_disk:.1f} MB on disk)")
    print(f"np.save:    {npy_s:.2f} s ({total_mb / npy_s:.1f} MB/s)")
    print(f"throughput ratio zarr / np.save: {npy_s / zarr_s:.2f}")


if __name__ == "__main__":
    main()
