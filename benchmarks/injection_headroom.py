"""How much can injecting the source's self-attention Q/K change an edit? Per layer: how spread out the
attention is, and how far the edit's own attention already is from the source's.

    python benchmarks/injection_headroom.py --model testbed --model runs/testbed-v2-export --t-start 0.6

For each model, and for a twin whose denoiser has the same config with random weights (the baseline),
four timbre edits without injection (the editor's inversion to --t-start with the empty prompt, 25 steps,
the target prompt at guidance 3.5), every self-attention layer at every step, the text-conditioned half.
Any model melodia loads: `--model cvssp/audioldm2-music` asks the same of AudioLDM 2. The rows are
softmax(QK^T / sqrt(d)) of the Q/K the injection taps record (diffusers' to_q/to_k outputs): exact for
the UNets; on DiTs that apply QK norms or rotary embeddings after the taps, an approximation.

- span: exp(entropy) of an attention row as a fraction of its keys, averaged over rows, heads, steps and
  clips (1.0: uniform, every query averages everything; 1/N: each query reads one key). Injected Q/K
  can only move the output where the attention routes, i.e. where the span is small.
- TV: total variation between the row computed from the source's Q/K (recorded during inversion, what
  injection would use) and from the edit's own Q/K at the same step: what injection replaces.

Positive control, printed first: the same two numbers on hand-made Q/K where each query matches one key
(span 1/N) and where the source's keys are shifted by half the sequence (TV 1), so a small number below
is the models', not the instrument's.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from editing.editor import Melodia  # noqa: E402
from editing.injection import record_source_qk  # noqa: E402
from editing.flow import ode_samplers  # noqa: E402
from editing.repository import AttentionRepository  # noqa: E402
from probing.capture import randomized_denoiser  # noqa: E402
from probing.hooks import AttentionHooks  # noqa: E402
from probing.layers import layer_names  # noqa: E402
from probing.models import load_model  # noqa: E402
from probing.synth import class_lists, render_clip  # noqa: E402
from probing.synth.score import FORMS  # noqa: E402

PAIRS = (("violin", "piano", 13), ("piano", "violin", 10), ("flute", "guitar", 11), ("organ", "marimba", 12))


def attention_rows(query: torch.Tensor, key: torch.Tensor, heads: int) -> torch.Tensor:
    """Softmax attention rows (batch, heads, queries, keys) from projected (batch, tokens, heads * dim) Q/K."""
    batch, tokens, channels = query.shape
    dim = channels // heads
    q = query.float().view(batch, tokens, heads, dim).transpose(1, 2)
    k = key.float().view(batch, -1, heads, dim).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) * dim**-0.5, dim=-1)


def span(rows: torch.Tensor) -> float:
    """Mean exp(entropy) of the rows as a fraction of the keys: 1 uniform, 1/N one key per query."""
    entropy = -(rows * rows.clamp_min(1e-12).log()).sum(-1)
    return float((entropy.exp() / rows.shape[-1]).mean())


def total_variation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(0.5 * (a - b).abs().sum(-1).mean())


def positive_control(tokens: int = 64, heads: int = 2, dim: int = 16) -> tuple[float, float]:
    """span and TV on Q/K built to route: one-hot matches (span -> 1/N), keys shifted by N/2 (TV -> 1)."""
    basis = torch.randn(tokens, heads * dim, generator=torch.Generator().manual_seed(0))
    basis = 40 * basis / basis.norm(dim=-1, keepdim=True)  # near-orthogonal, large logits on the diagonal
    own = attention_rows(basis[None], basis[None], heads)
    shifted = attention_rows(basis[None], basis.roll(tokens // 2, 0)[None], heads)
    return span(own), total_variation(own, shifted)


def headroom(model, t_start: float, steps: int, form: str = "walk", style: str = "waltz",
             mood: str = "calm") -> dict[str, tuple[float, float]]:
    """Per self-attention layer name: (span, TV) over the edits of PAIRS (tunes in `form`, arranged in `style`
    and `mood`) without injection."""
    editor = Melodia(model)
    modules = editor.injected_modules("self:*")
    names = dict(zip((m.path for m in modules), layer_names(modules)))
    heads = {m.path: model.denoiser.get_submodule(m.path).heads for m in modules}
    spans, tvs = {p: [] for p in names}, {p: [] for p in names}
    empty = model.encode_prompt([""], guidance=1.0)
    invert, sample = ode_samplers(model)
    for source, target, seed in PAIRS:
        z0 = model.encode_audio(render_clip(source, style, mood, seed, form=form))
        prompt = model.encode_prompt([f"a {mood} {style} played on {target}"], guidance=3.5)
        with AttentionRepository() as repository:
            with record_source_qk(model, modules, repository):
                zt = invert(model, z0, empty, steps, t_start)

            def compare(call) -> None:
                query, key = repository.get(call.timestep, call.path)
                from_source = attention_rows(query, key, heads[call.path])
                own = attention_rows(call.query[-1:], call.key[-1:], heads[call.path])  # the cond half
                spans[call.path].append(span(from_source))
                tvs[call.path].append(total_variation(from_source, own))

            with AttentionHooks(model, list(names), on_call=compare, expected_per_forward=len(names)):
                sample(model, zt, prompt, steps, t_start, guidance=3.5)
    return {names[p]: (float(np.mean(spans[p])), float(np.mean(tvs[p]))) for p in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="a model name or pipeline folder (repeat; default testbed)")
    parser.add_argument("--t-start", type=float, default=0.6)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--form", choices=FORMS, default="walk", help="the source tunes' form (aaba: repeated motifs)")
    parser.add_argument("--style", default="waltz", choices=class_lists()["style"],
                        help="the sources' style (a calm waltz holds 3-4 notes; staccato 9 or more, so every aaba "
                             "tune repeats)")
    parser.add_argument("--mood", default="calm", choices=class_lists()["mood"])
    args = parser.parse_args()
    control_span, control_tv = positive_control()
    print(f"positive control (64 tokens): span {control_span:.3f} (1/N = {1 / 64:.3f}), TV {control_tv:.3f}")
    for name in args.model or ["testbed"]:
        model = load_model(name)
        arrangement = (args.form, args.style, args.mood)
        trained = headroom(model, args.t_start, args.steps, *arrangement)
        with randomized_denoiser(model, seed=0):  # the probes' baseline: same config, fresh weights
            random = headroom(model, args.t_start, args.steps, *arrangement)
        print(f"\n{name}, t_start {args.t_start}, {len(PAIRS)} edits of {args.form} tunes ({args.mood} {args.style}) "
              "without injection")
        print("| layer | span, trained | span, random denoiser | TV source vs own, trained | TV, random denoiser |")
        print("|---|---|---|---|---|")
        for layer in trained:
            print(f"| {layer} | {trained[layer][0]:.3f} | {random[layer][0]:.3f} | {trained[layer][1]:.3f} | "
                  f"{random[layer][1]:.3f} |")
        print(f"| mean | {np.mean([v[0] for v in trained.values()]):.3f} | {np.mean([v[0] for v in random.values()]):.3f} "
              f"| {np.mean([v[1] for v in trained.values()]):.3f} | {np.mean([v[1] for v in random.values()]):.3f} |")


if __name__ == "__main__":
    main()
