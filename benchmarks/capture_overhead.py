"""Capture overhead: sampling with capture (reduced maps written to Zarr) / sampling without.

    python benchmarks/capture_overhead.py                 # tiny-audioldm2 and the testbed, whole pipeline
    python benchmarks/capture_overhead.py --full-size     # + the real AudioLDM 2 UNet config, random weights

Both arms run in this process, alternating, with the same prompts, steps and seed; the ratio
is measured in one run. The full-size arm times the denoiser loop (10.24 s clip, CFG batch 2),
which is where sampling spends its time, with every attention module (96) recorded.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch

from probing.capture import CaptureSettings, capture, map_spec
from probing.layers import measure_layer_table
from probing.maps import Reduction
from probing.prompts import PromptSet
from probing.recorder import AttentionRecorder
from probing.store import CaptureStore

PROMPTS = ["a sad waltz played on the violin", "a happy march on the trumpet", "a calm ballad on the flute",
           "a tense ostinato on the cello"]


def best_of(repeats: int, run) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def pipeline_ratio(name: str, steps: int, repeats: int) -> None:
    from probing.models import load_model

    model = load_model(name)
    if hasattr(model, "clip_seconds"):
        model.clip_seconds = 2.56
    prompts = PromptSet(PROMPTS)
    settings = CaptureSettings(layers="*", steps=steps)

    def plain():
        for prompt in PROMPTS:
            model.generate(prompt, steps, settings.guidance, settings.seed, decode=False)

    def captured():
        with tempfile.TemporaryDirectory() as folder:
            capture(model, prompts, f"{folder}/s.zarr", settings, progress=False)

    plain()  # warm-up
    base, with_capture = best_of(repeats, plain), best_of(repeats, captured)
    print(f"{name:16s} {len(PROMPTS)} prompts x {steps} steps: plain {base:.2f} s, capture {with_capture:.2f} s, "
          f"ratio {with_capture / base:.3f}x")


def full_size_ratio(steps: int, specs: list[str]) -> None:
    from probing.models.audioldm2 import reference_model

    model = reference_model("cpu")
    table = measure_layer_table(model)
    inputs = model.dummy_denoiser_inputs(batch=2)  # CFG batch
    reduction = Reduction()
    timesteps = [float(t) for t in torch.linspace(900, 100, steps).round()]

    def loop():
        with torch.no_grad():
            for t in timesteps:
                model.denoiser(**{**inputs, "timestep": torch.tensor(t)})

    def captured(modules):
        with tempfile.TemporaryDirectory() as folder:
            specs = [map_spec(m, steps, reduction) for m in modules]
            store = CaptureStore.create(f"{folder}/s.zarr", prompts=["p"], specs=specs, identity={"m": 1})
            with AttentionRecorder(model, modules, reduction, n_prompts=1) as recorder:
                loop()
            maps = {spec.name: recorder.stacked(m.path)[1][:, 0, 0] for spec, m in zip(specs, modules)}
            store.write_prompt(0, {k: v[..., :spec.shape[-1]] for (k, v), spec in zip(maps.items(), specs)})

    base = best_of(1, loop)
    for spec in specs:
        modules = table.select(spec)
        with_capture = best_of(1, lambda: captured(modules))
        print(f"audioldm2-music full-size UNet (random weights), {steps} CFG steps of 10.24 s, layers {spec} "
              f"({len(modules)} modules): plain {base:.1f} s, capture {with_capture:.1f} s, "
              f"ratio {with_capture / base:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--full-size-steps", type=int, default=2)
    parser.add_argument("--full-size-layers", default="*;cross:*;self:8-14",
                        help="layer specs to time on the full-size UNet, separated by ';'")
    parser.add_argument("--models", default="tiny-audioldm2,testbed", help="comma-separated model names")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for name in args.models.split(","):
        pipeline_ratio(name, args.steps, args.repeats)
    if args.full_size:
        full_size_ratio(args.full_size_steps, args.full_size_layers.split(";"))


if __name__ == "__main__":
    main()
