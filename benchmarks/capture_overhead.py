"""Capture overhead: sampling with capture / sampling without, one pass vs two passes over attention.

    python benchmarks/capture_overhead.py                 # tiny-audioldm2 and the testbed, whole pipeline
    python benchmarks/capture_overhead.py --full-size     # + the real AudioLDM 2 UNet config, random weights

Every arm runs in this process, alternating, with the same prompts, steps and seed; the ratios
are measured in one run. Arms: plain sampling; recording every module every step with the map
made in a second pass beside torch's SDPA (`one_pass=False`, how capture worked before); with
output and map from one pass (`one_pass=True`, the default); and, on the pipelines, the whole
`capture()` (layer table, text embeddings, store writes); the pipeline arms take turns for
--repeats rounds (best of each shown). The full-size arm times the denoiser loop (10.24 s clip,
CFG batch 2), where sampling spends its time, the arms taking turns for --repeats rounds
(medians shown).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
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
    modules = measure_layer_table(model).select("*")

    def plain():
        for prompt in PROMPTS:
            model.generate(prompt, steps, settings.guidance, settings.seed, decode=False)

    def recorded(one_pass: bool):
        for prompt in PROMPTS:
            with AttentionRecorder(model, modules, settings.reduction, one_pass=one_pass):
                model.generate(prompt, steps, settings.guidance, settings.seed, decode=False)

    def captured():
        with tempfile.TemporaryDirectory() as folder:
            capture(model, prompts, f"{folder}/s.zarr", settings, progress=False)

    plain()  # warm-up
    times = {"plain": [], "two passes": [], "one pass": [], "capture()": []}
    for _ in range(repeats):  # alternating arms: a load change hits all of them
        for arm, run in [("plain", plain), ("two passes", lambda: recorded(False)),
                         ("one pass", lambda: recorded(True)), ("capture()", captured)]:
            start = time.perf_counter()
            run()
            times[arm].append(time.perf_counter() - start)
    best = {arm: min(t) for arm, t in times.items()}
    print(f"{name:16s} {len(PROMPTS)} prompts x {steps} steps, {len(modules)} modules, best of {repeats}: "
          + ", ".join(f"{arm} {t:.2f} s" for arm, t in best.items()))
    print(f"{'':16s} ratio to plain: " + ", ".join(f"{arm} {best[arm] / best['plain']:.3f}x"
                                                  for arm in ("two passes", "one pass", "capture()")))


def full_size_ratio(steps: int, specs: list[str], repeats: int) -> None:
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

    def captured(modules, one_pass: bool):
        with tempfile.TemporaryDirectory() as folder:
            specs = [map_spec(m, steps, reduction) for m in modules]
            store = CaptureStore.create(f"{folder}/s.zarr", prompts=["p"], specs=specs, identity={"m": 1})
            with AttentionRecorder(model, modules, reduction, n_prompts=1, one_pass=one_pass) as recorder:
                loop()
            maps = {spec.name: recorder.stacked(m.path)[1][:, 0, 0] for spec, m in zip(specs, modules)}
            store.write_prompt(0, {k: v[..., :spec.shape[-1]] for (k, v), spec in zip(maps.items(), specs)})

    for spec in specs:
        modules = table.select(spec)
        times: dict[str, list[float]] = {"plain": [], "two": [], "one": []}
        for _ in range(repeats):  # the arms take turns: a change in the machine's load hits all three
            times["plain"].append(best_of(1, loop))
            times["two"].append(best_of(1, lambda: captured(modules, False)))
            times["one"].append(best_of(1, lambda: captured(modules, True)))
        med = {arm: float(np.median(t)) for arm, t in times.items()}
        print(f"audioldm2-music full-size UNet (random weights), {steps} CFG steps of 10.24 s, layers {spec} "
              f"({len(modules)} modules), median of {repeats}: plain {med['plain']:.1f} s, two passes {med['two']:.1f} s "
              f"({med['two'] / med['plain']:.3f}x), one pass {med['one']:.1f} s ({med['one'] / med['plain']:.3f}x); "
              f"per round one pass / plain " + ", ".join(f"{o / b:.3f}" for o, b in zip(times["one"], times["plain"])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--full-size-steps", type=int, default=2)
    parser.add_argument("--full-size-layers", default="*",
                        help="layer specs to time on the full-size UNet, separated by ';'")
    parser.add_argument("--models", default="tiny-audioldm2,testbed", help="comma-separated model names")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    for name in args.models.split(","):
        pipeline_ratio(name, args.steps, args.repeats)
    if args.full_size:
        full_size_ratio(args.full_size_steps, args.full_size_layers.split(";"), args.repeats)


if __name__ == "__main__":
    main()
