"""Edit overhead: a Melodia edit (Q/K recorded, then injected) / the DDIM edit without injection.

    python benchmarks/edit_overhead.py --threads 1                     # the testbed, whole edits (Melodia.edit)
    python benchmarks/edit_overhead.py --model testbed --model testbed-dit --threads 1   # + the DiT testbed
    python benchmarks/edit_overhead.py --model tiny-ace-step --model tiny-longcat --threads 1
    python benchmarks/edit_overhead.py --full-size                     # + the real AudioLDM 2 UNet, random weights

The baseline arm is the same edit without injection (`ddim` on DDIM models, `inversion` on flow
models). Both arms run in this process, alternating, with the same source, prompt, steps, t_start and seed;
the ratio is measured in one run, for the whole edit and for inversion + denoising alone (where
the recording and injection happen), on the fastest of --repeats runs of each arm, and as the median of the per-repeat ratios (each
repeat runs both arms back to back). Wall time and this process's CPU time are both reported: on a
shared machine the CPU-time ratios are the ones to trust (run with --threads 1). The full-size arm has no codec or text encoders: it times
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


def timed(run) -> tuple[float, float, object]:
    """Wall seconds and this process's CPU seconds one call of `run` takes, and its result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def model_ratio(model_name: str, steps: int, t_start: float, repeats: int) -> None:
    import librosa

    from probing.models import load_model
    from probing.synth import SAMPLE_RATE, render_clip

    editor = Melodia(load_model(model_name))
    baseline = "inversion" if editor.flow else "ddim"
    rate = editor.model.sample_rate
    source = librosa.resample(render_clip("piano", "waltz", "happy", 3), orig_sr=SAMPLE_RATE, target_sr=rate)

    def edit(method: str):
        return lambda: editor.edit(source, PROMPT, method=method, steps=steps, t_start=t_start)

    edit(baseline)()  # warm-up
    edit("melodia")()  # warm-up; measures the layer table once
    runs = {baseline: [], "melodia": []}
    for _ in range(repeats):  # alternating arms
        for method in runs:
            runs[method].append(timed(edit(method)))
    wall = {m: min(w for w, _, _ in r) for m, r in runs.items()}
    cpu = {m: min(c for _, c, _ in r) for m, r in runs.items()}
    # Each repeat runs the two arms back to back: their CPU-time ratio cancels slow drifts in load.
    paired = sorted(m[1] / b[1] for m, b in zip(runs["melodia"], runs[baseline]))
    core = {m: min(res.timings["invert"] + res.timings["denoise"] for _, _, res in r) for m, r in runs.items()}
    result = runs["melodia"][-1][2]
    print(f"{model_name}, {steps} steps, t_start {t_start}, layers auto ({len(result.injected)} modules), fastest of "
          f"{repeats}: edit {baseline} {wall[baseline]:.2f} s, melodia {wall['melodia']:.2f} s, wall ratio "
          f"{wall['melodia'] / wall[baseline]:.3f}x; CPU {cpu[baseline]:.2f} s vs {cpu['melodia']:.2f} s, CPU ratio "
          f"{cpu['melodia'] / cpu[baseline]:.3f}x; invert+denoise wall ratio {core['melodia'] / core[baseline]:.3f}x")
    print(f"  paired CPU ratios over {repeats} repeats: median {paired[len(paired) // 2]:.3f}x "
          f"(range {paired[0]:.3f}-{paired[-1]:.3f})")
    print(f"{model_name} repository bytes: predicted {result.repository_bytes['predicted']:,}, "
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
        plain, _, _ = timed(lambda: edit([], repository))
        melodia, _, _ = timed(lambda: edit(modules, repository))
        measured = repository.nbytes
    predicted = predicted_bytes(model, modules, inverted_steps(steps, t_start))
    print(f"audioldm2-music full-size UNet (random weights), {steps} steps at t_start {t_start}, 10.24 s, self:8-14 "
          f"({len(modules)} modules): invert+denoise ddim {plain:.1f} s, melodia {melodia:.1f} s, "
          f"ratio {melodia / plain:.3f}x; repository bytes predicted {predicted:,}, measured {measured:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append",
                        help="model(s) to time whole edits on (default: testbed; repeat the flag for more, e.g. "
                             "testbed-dit, tiny-ace-step, tiny-stable-audio-3, tiny-longcat)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--t-start", type=float, default=0.6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-size", action="store_true")
    parser.add_argument("--full-size-steps", type=int, default=4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    for name in args.model or ["testbed"]:
        model_ratio(name, args.steps, args.t_start, args.repeats)
    if args.full_size:
        full_size_ratio(args.full_size_steps, args.t_start)


if __name__ == "__main__":
    main()
