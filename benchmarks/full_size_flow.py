"""Capture and edit overhead per denoiser forward on the full-size DiTs edited by ODE (random weights).

    python benchmarks/full_size_flow.py                  # ACE-Step 1.5, Stable Audio 3, LongCat, Stable Audio Open
    python benchmarks/full_size_flow.py --families ace-step --seconds 10 --repeats 3

Each family's real denoiser is built from its pinned config (probing/models/configs) with random
weights and put into the family's tiny pipeline, so the adapter (hooks, taps, RoPE, masks) is the
one users get; the inputs are random tensors of the real widths for a --seconds clip. Per forward,
alternating arms in one run, fastest of --repeats:
  capture  : the CFG batch (2) with every attention module recorded (reduced maps) / plain;
  record   : the inversion's batch 1 with the default edit layers' Q/K stored / plain;
  inject   : the CFG batch with those layers' Q/K replaced by the stored ones / plain.
A whole edit is inversion forwards (record) + denoising forwards (inject), so its overhead lies
between those two ratios (Stable Audio Open's inversion runs 1 + 4 refinement forwards per step). Ratios of this process's CPU time are printed next to wall time.
"""
from __future__ import annotations

import argparse
import time

import torch

from editing.editor import Melodia
from editing.injection import inject_source_qk, record_source_qk
from editing.repository import AttentionRepository
from probing.maps import Reduction
from probing.models import load_model
from probing.models.registry import families
from probing.models.tiny_parts import load_reference_config
from probing.recorder import AttentionRecorder

FLOW_FAMILIES = ("ace-step", "stable-audio-3", "longcat", "stable-audio")  # stable-audio: the 47.55 s window


def full_size(family: str, seconds: float):
    """The family's adapter around its tiny pipeline with the full-size denoiser (random weights)."""
    declared = families()[family]
    tiny, config = declared.tiny, declared.reference_config
    model = load_model(tiny)
    model.clip_seconds = seconds
    denoiser = type(model.denoiser).from_config(load_reference_config(config)).eval()
    model.pipeline.transformer = denoiser
    if family == "ace-step":  # its dummy inputs come from the tiny encoders: give the layer table real widths
        model.dummy_denoiser_inputs = lambda batch=1: inputs(model, family, batch)
    return model


def inputs(model, family: str, batch: int) -> dict:
    """Random denoiser inputs of the real widths (ACE-Step's conditioning comes from encoders of the tiny width)."""
    if family != "ace-step":
        return model.dummy_denoiser_inputs(batch)
    config = model.denoiser.config
    frames = model.latent_shape[0]
    timestep = torch.full((batch,), 0.5)
    return {"hidden_states": torch.randn(batch, frames, config.audio_acoustic_hidden_dim), "timestep": timestep,
            "timestep_r": timestep,
            "encoder_hidden_states": torch.randn(batch, 128, config.encoder_hidden_size or config.hidden_size),
            "context_latents": torch.randn(batch, frames, config.in_channels - config.audio_acoustic_hidden_dim)}


def timed(run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        run()
    return time.perf_counter() - wall, time.process_time() - cpu


def ratios(model, family: str, repeats: int) -> None:
    parameters = sum(p.numel() for p in model.denoiser.parameters())
    batch1, batch2 = inputs(model, family, 1), inputs(model, family, 2)
    editor = Melodia(model)
    modules = editor.injected_modules(model.default_edit_layers)
    everything = editor.table.modules

    def forward(batch):
        return lambda: model.denoiser(**batch, return_dict=False)

    with AttentionRepository(memory_budget_mb=1e6) as repository:
        def record():
            with record_source_qk(model, modules, repository):
                forward(batch1)()

        def capture():
            with AttentionRecorder(model, everything, Reduction(), n_prompts=1):
                forward(batch2)()

        def inject():
            with inject_source_qk(model, modules, repository):
                forward(batch2)()

        record()  # warm-up, and fills the repository for inject
        arms = {"plain1": forward(batch1), "record": record, "plain2": forward(batch2), "capture": capture,
                "inject": inject}
        runs = {name: [] for name in arms}
        for _ in range(repeats):
            for name, run in arms.items():
                runs[name].append(timed(run))
    best = {name: (min(w for w, _ in r), min(c for _, c in r)) for name, r in runs.items()}
    tokens = everything[0].query_tokens
    print(f"{family}: full-size denoiser, {parameters / 1e9:.2f} B parameters, {model.clip_seconds:g} s clip "
          f"({tokens} self-attention tokens), {len(everything)} attention modules, edit layers "
          f"{model.default_edit_layers} ({len(modules)} modules)")
    for arm, plain in (("capture", "plain2"), ("record", "plain1"), ("inject", "plain2")):
        (wall, cpu), (wall0, cpu0) = best[arm], best[plain]
        print(f"  {arm:8s} {wall:7.2f} s vs plain {wall0:7.2f} s: wall ratio {wall / wall0:.3f}x, "
              f"CPU ratio {cpu / cpu0:.3f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(FLOW_FAMILIES), help=f"comma-separated: {', '.join(FLOW_FAMILIES)}")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10 s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    for family in args.families.split(","):
        ratios(full_size(family, args.seconds), family, args.repeats)


if __name__ == "__main__":
    main()
