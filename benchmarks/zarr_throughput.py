"""Zarr write and read throughput of the capture store vs raw `np.save` / `np.load` of the same arrays.

    python benchmarks/zarr_throughput.py [--prompts 64] [--repeats 5]

The arrays are the testbed's full capture (32 modules, 10 steps, default reduction) filled with
attention-like values; every writer stores the same fp16 bytes. Three ways are timed in one run:
the store as it was (zarr-python's codec pipeline, one prompt per call), the store as capture
writes it now (the zarrs pipeline when installed, one call per shard of prompts), and np.save of
one raw .npy per array and prompt. The three take turns for --repeats rounds and medians are
shown. Ratios = np.save time / store time (target >= 0.5), and the same for reading every array
back (what probing does). zarrs encodes on its own thread pool (all cores); np.save is one thread.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from probing.store import ArraySpec, CaptureStore, fast_codecs_available


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


def write_store(url: str, specs: list[ArraySpec], maps: list[dict], n: int, per_shard: int, batched: bool) -> float:
    """Seconds to write `n` prompts (maps cycled) into a new store."""
    store = CaptureStore.create(url, prompts=[f"p{i}" for i in range(n)], specs=specs, identity={"benchmark": 1},
                                prompts_per_shard=per_shard)
    start = time.perf_counter()
    if batched:
        for batch in store.shard_batches(list(range(n))):
            store.write_prompts(batch, {s.name: np.stack([maps[i % len(maps)][s.name] for i in batch]) for s in specs})
    else:
        for i in range(n):
            store.write_prompt(i, maps[i % len(maps)])
    return time.perf_counter() - start


def read_store(url: str, specs: list[ArraySpec]) -> float:
    store = CaptureStore.open(url)
    start = time.perf_counter()
    for spec in specs:
        store.read(spec.name)
    return time.perf_counter() - start


def npy_write(folder: Path, maps: list[dict], n: int) -> float:
    folder.mkdir()
    start = time.perf_counter()
    for i in range(n):
        for name, array in maps[i % len(maps)].items():
            np.save(folder / f"{i}_{name.replace('/', '_')}.npy", array)
    return time.perf_counter() - start


def npy_read(folder: Path, names: list[str], n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        for name in names:
            np.load(folder / f"{i}_{name.replace('/', '_')}.npy")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5, help="rounds of the three writers, in turn; medians shown")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    specs = testbed_like_specs()
    maps = [{s.name: attention_like(s.shape, rng) for s in specs} for _ in range(4)]
    total_mb = args.prompts * sum(a.nbytes for a in maps[0].values()) / 2**20
    times: dict[str, list[float]] = {k: [] for k in ("npy_w", "npy_r", "old_w", "old_r", "new_w", "new_r")}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):  # the writers take turns: a change in the machine's load hits all three
            times["npy_w"].append(npy_write(Path(folder, f"npy{round_}"), maps, args.prompts))
            times["npy_r"].append(npy_read(Path(folder, f"npy{round_}"), list(maps[0]), args.prompts))
            os.environ["MELODIA_ZARRS"] = "0"  # the store as it was: zarr-python's codec pipeline, 1 prompt a call
            try:
                times["old_w"].append(write_store(f"{folder}/old{round_}.zarr", specs, maps, args.prompts, 1,
                                                  batched=False))
                times["old_r"].append(read_store(f"{folder}/old{round_}.zarr", specs))
            finally:
                del os.environ["MELODIA_ZARRS"]
            times["new_w"].append(write_store(f"{folder}/new{round_}.zarr", specs, maps, args.prompts, None,
                                              batched=True))
            times["new_r"].append(read_store(f"{folder}/new{round_}.zarr", specs))
        on_disk = sum(p.stat().st_size for p in Path(folder, "new0.zarr").rglob("*") if p.is_file()) / 2**20
    median = {k: float(np.median(v)) for k, v in times.items()}
    pipeline = "zarrs" if fast_codecs_available() else "zarr-python (zarrs not installed)"
    print(f"{args.prompts} prompts, {len(specs)} arrays each, {total_mb:.1f} MB of fp16 maps ({on_disk:.1f} MB on disk); "
          f"medians of {args.repeats} rounds")
    print(f"{'writer':44s} {'write s':>8s} {'MB/s':>7s} {'read s':>7s} {'MB/s':>7s}")
    for label, key in [("np.save / np.load, one .npy per array+prompt", "npy"),
                       ("store before: zarr-python, 1 prompt per call", "old"),
                       (f"store now: {pipeline}, 1 call per shard", "new")]:
        w, r = median[f"{key}_w"], median[f"{key}_r"]
        print(f"{label:44s} {w:8.2f} {total_mb / w:7.1f} {r:7.2f} {total_mb / r:7.1f}")
    ratios = [n / w for n, w in zip(times["npy_w"], times["new_w"])]
    print(f"write ratio store / np.save: before {median['npy_w'] / median['old_w']:.2f}, now "
          f"{median['npy_w'] / median['new_w']:.2f} (target >= 0.5; per round now {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"read ratio store / np.load:  before {median['npy_r'] / median['old_r']:.2f}, now "
          f"{median['npy_r'] / median['new_r']:.2f}; store read / store write speed now "
          f"{median['new_w'] / median['new_r']:.2f}")


if __name__ == "__main__":
    main()
