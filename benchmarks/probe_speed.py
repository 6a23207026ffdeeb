"""Profile time from the store: read and pool every layer's maps, then probe them all at once.

    python benchmarks/probe_speed.py                  # 1024 prompts, the testbed's 16 layers, 3 attributes
    python benchmarks/probe_speed.py --prompts 256 --one-by-one

A store shaped like the testbed's default capture (16 layers x self/cross maps at the default
reduction, 5 steps, a text embedding; labels with the probing set's class counts 16/11/8 and 10
templates) is written first (untimed). Then, timed in this process: reading and pooling every
map as `melodia probe` does (`layer_features`, once with zarr-python's codecs as the store read
before and once as it reads now), the profile itself (batched MLP + linear probes, control
tasks, 5 template-grouped folds), and one batch of MLP probes trained with the hand-written
gradients `train_batched` uses vs autograd (how it trained before). `--one-by-one` also times the same probes one feature set at
a time, scaled from a few. Target: the whole profile, reading included, under 60 s on 2 cores.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from probing.features import TEXT_EMBEDDING, layer_features
from probing.probes import ProbeSettings, _init_weights, _logits, _sample_weights, probe_features, train_batched
from probing.store import ArraySpec, CaptureStore

CLASSES = {"instrument": 16, "style": 11, "mood": 8}
GRIDS = [(16, 4)] * 4 + [(8, 2)] * 8 + [(16, 4)] * 4  # the testbed's pooled query grids, by layer


def testbed_like_store(url: str, n_prompts: int, steps: int = 5, seed: int = 0) -> CaptureStore:
    """A complete store of attention-like random maps with the testbed default capture's layout."""
    rng = np.random.default_rng(seed)
    specs = []
    for layer, (t, f) in enumerate(GRIDS, start=1):
        for kind, keys in (("self", t * f), ("cross", 16)):
            specs.append(ArraySpec(f"layer{layer}.attn/{kind}", (steps, t * f, keys), ("step", "query", "key"),
                                   attrs={"layer": layer, "kind": kind, "module": f"layer{layer}.attn"}))
    specs.append(ArraySpec(TEXT_EMBEDDING, (256,), ("embedding",), "float32", attrs={"kind": "text"}))
    labels = {a: [str(v) for v in rng.integers(0, c, n_prompts)] for a, c in CLASSES.items()}
    store = CaptureStore.create(url, prompts=[f"prompt {i}" for i in range(n_prompts)], specs=specs,
                                identity={"benchmark": "probe_speed"}, labels=labels,
                                template_ids=list(np.arange(n_prompts) % 10))
    for batch in store.shard_batches(list(range(n_prompts))):
        maps = {}
        for spec in specs:
            values = rng.random((len(batch), *spec.shape), dtype=np.float32)
            maps[spec.name] = values if spec.name == TEXT_EMBEDDING else values / values.sum(-1, keepdims=True)
        store.write_prompts(batch, maps)
    return store


def autograd_train(z: torch.Tensor, y: torch.Tensor, n_classes: int, hidden: int, settings: ProbeSettings,
                   generator: torch.Generator) -> None:
    """`train_batched` as it was: the same loss and AdamW, gradients by autograd (the reference arm)."""
    weights = [w.requires_grad_() for w in _init_weights(z.shape[0], z.shape[-1], hidden, n_classes, generator)]
    optimiser = torch.optim.AdamW(weights, lr=settings.lr, weight_decay=settings.weight_decay)
    sample_weights = _sample_weights(y, n_classes)
    for _ in range(settings.epochs):
        optimiser.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(_logits(weights, z).transpose(1, 2), y, reduction="none")
        (loss * sample_weights).sum().backward()
        optimiser.step()


def gradient_ratio(settings: ProbeSettings, n_train: int) -> tuple[float, float]:
    """Seconds to train one batch of MLP probes (33 feature sets, 16 classes) by hand-written gradients
    and by autograd."""
    generator = torch.Generator().manual_seed(0)
    z, y = torch.randn(33, n_train, settings.components, generator=generator), torch.randint(0, 16, (33, n_train))
    ours = timed(lambda: train_batched(z, y, 16, settings.hidden, settings, torch.Generator().manual_seed(1)))[1]
    autograd = timed(lambda: autograd_train(z, y, 16, settings.hidden, settings, torch.Generator().manual_seed(1)))[1]
    return ours, autograd


def timed(run):
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one-by-one", action="store_true", help="also time one probe at a time (slow)")
    parser.add_argument("--sample-layers", type=int, default=2, help="layers timed one probe at a time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = ProbeSettings()
    with tempfile.TemporaryDirectory() as folder:
        store = testbed_like_store(f"{folder}/maps.zarr", args.prompts)
        os.environ["MELODIA_ZARRS"] = "0"  # the store's reads as they were: zarr-python's codec pipeline
        try:
            _, read_before = timed(lambda: layer_features(CaptureStore.open(store.url), families=("flat",)))
        finally:
            del os.environ["MELODIA_ZARRS"]
        fresh = CaptureStore.open(store.url)
        layers, read_now = timed(lambda: layer_features(fresh, families=("flat",)))
        text, read_text = timed(lambda: fresh.read(TEXT_EMBEDDING))
        maps = {f.name: f.values for f in layers} | {"text": text}
        labels, groups = fresh.labels, fresh.template_ids
        _, probing = timed(lambda: probe_features(maps, labels, groups, settings))
    read = read_now + read_text
    ours, autograd = gradient_ratio(settings, int(args.prompts * (settings.folds - 1) / settings.folds))
    print(f"{args.prompts} prompts x {len(maps)} feature sets (16 layers x self/cross + text) x {len(CLASSES)} "
          f"attributes x (MLP + linear + control tasks), {settings.folds} grouped folds, {args.threads} threads")
    print(f"read + pool the store: {read:6.1f} s now ({read_before:.1f} s with zarr-python's codecs, "
          f"{read_before / read_now:.1f}x)")
    print(f"probe (batched):       {probing:6.1f} s")
    print(f"one batch of 33 MLP probes, 100 epochs: hand-written gradients {ours:.2f} s, autograd {autograd:.2f} s "
          f"({autograd / ours:.1f}x)")
    print(f"whole profile:         {read + probing:6.1f} s   (target < 60 s: {(read + probing) / 60:.2f}x of target)")
    if args.one_by_one:
        sample = [f"{kind}:{layer}" for layer in range(1, args.sample_layers + 1) for kind in ("self", "cross")]
        one = sum(timed(lambda name=name: probe_features({name: maps[name]}, labels, groups, settings))[1]
                  for name in sample) * len(maps) / len(sample)
        print(f"one probe at a time (scaled from {len(sample)} feature sets): {one:.1f} s, "
              f"batching {one / probing:.1f}x faster")


if __name__ == "__main__":
    main()
