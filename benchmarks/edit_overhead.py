"""Edit overhead: a Melodia edit (Q/K recorded, then injected) / the DDIM edit without injection.

    python benchmarks/edit_overhead.py                 # the testbed, whole edits through Melodia.edit
    python benchmarks/edit_overhead.py --full-size     # + the real AudioLDM 2 UNet config, random weights

Both arms run in this process, alternating, with the same source, prompt, steps, t_start and seed;
the ratio is measured in one run, for the whole edit and for inversion + denoising alone (where
the recording and injection happen). The full-size arm has no codec or text encoders: it times
inversion + denoising of a random 10.24 s latent with random conditioning (CFG batch 2), self:8-14.
Both print the repository bytes predicted from the layer table next to the bytes measured.
"""
from __future__ import annotations

import argparse
import time

import torch

from editing.editor import Melodia
from editing.injection import inject_source_qk, record_source_qk
from editing.inversion import ddim_invert, ddim_sample, inverted_steps
from editing.repository import AttentionRepository, predicted_bytes
from probing.models.base import Conditioning

PROMPT = "a happy waltz played on the violin"


def timed(run) -> tuple[float, object]:
    """Seconds one call of `run` takes, and its result."""
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def testbed_ratio(steps: int, t_start: float, repeats: int) -> None:
    from probing.models import load_model
    from probing.synth import render_clip

    editor = Melodia(load_model("testbed"))
    source = render_clip("piano", "waltz", "happy", 3)

    def edit(method: str):
        return lambda: editor.edit(source, PROMPT, method=method, steps=steps, t_start=t_start)

    edit("ddim")()  # warm-up
    runs = {"ddim": [], "melodia": []}
    for _ in range(repeats):  # alternating arms
        for method in runs:
            runs[method].append(timed(edit(method)))
    total = {m: min(seconds for seconds, _ in r) for m, r in runs.items()}
    core = {m: min(result.timings["invert"] + result.timings["denoise"] for _, result in r) for m, r in runs.items()}
    result = runs["melodia"][-1][1]
    print(f"testbed, {steps} steps, t_start {t_start}, layers auto ({len(result.injected)} modules): "
          f"edit ddim {total['ddim']:.2f} s, melodia {total['melodia']:.2f} s, "
          f"ratio {total['melodia'] / total['ddim']:.3f}x; invert+denoise ratio {core['melodia'] / core['ddim']:.3f}x")
    print(f"testbed repository bytes: predicted {result.repository_bytes['predicted']:,}, "
          f"measured {result.repository_bytes['measured']:,}")


def full_size_ratio(steps: int, t_start: float) -> None:
    from probing.models.audioldm2 import reference_model

    model = reference_model("cpu")
    modules = Melodia(model).injected_modules("self:8-14")
    inputs = {k: v for k, v in model.dummy_denoiser_inputs(batch=2).items() if k not in ("sample", "timestep")}
    target = Conditioning(inputs, guided=True)
    empty = Conditioning({k: v[:1] for k, v in inputs.items()}, guided=False)
    z0 = torch.randn(1, *model.latent_shape)

    def edit(injected: list, repository: AttentionRepository):
        with record_source_qk(model, injected, repository):
            zt = ddim_invert(model, z0, empty, steps, t_start)
        with inject_source_qk(model, injected, repository):
            return ddim_sample(model, zt, target, steps, t_start, guidance=3.5)

    with AttentionRepository() as repository:
        plain, _ = timed(lambda: edit([], repository))
        melodia, _ = timed(lambda: edit(modules, repository))
        measured = repository.nbytes
    predicted = predicted_bytes(model, modules, inverted_steps(steps, t_start))
    print(f"audioldm2-music full-size UNet (random weights), {steps} steps at t_start {t_start}, 10.24 s, self:8-14 "
          f"({len(modules)} modules): invert+denoise ddim {plain:.1f} s, melodia {melodia:.1f} s, "
          f"ratio {melodia / plain:.3f}x; repository bytes predicted {predicted:,}, measured {measured:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--t-start", type=float, default=0.6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--full-size-steps", type=int, default=4)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    testbed_ratio(args.steps, args.t_start, args.repeats)
    if args.full_size:
        full_size_ratio(args.full_size_steps, args.t_start)


if __name__ == "__main__":
    main()
