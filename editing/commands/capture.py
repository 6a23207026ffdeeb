"""`melodia capture`: record reduced attention maps of every chosen layer into a Zarr store."""
from __future__ import annotations

from editing.commands.common import add_model_argument, formatter

HELP = """Run each prompt through the model and store its reduced attention maps (Zarr v3).

The store holds one array per attention module, shaped (prompt, step, query, key), plus prompts,
labels, template ids and a done mask. Re-running the same command resumes an interrupted capture.
Under torchrun each rank writes its own prompts:  torchrun --nproc_per_node 2 -m editing.cli capture ...

reductions (--reduce, comma separated):
  heads=mean|all     average heads (default) or keep them
  grid=16x4|none     pool the (time x freq) token grid to at most this size (default 16x4)
  batch=cond|both    keep the text-conditioned half of the CFG batch (default) or both halves

examples:
  melodia capture --prompts datasets/probing/testbed.yaml --store maps.zarr
  melodia capture --model tiny-audioldm2 --prompts prompts.txt --store m.zarr --layers cross:* --steps 5
  melodia capture --prompts testbed-small.yaml --store m.zarr --steps 20 --timesteps 0,10,19 --reduce heads=all
  melodia capture --prompts testbed.yaml --store random.zarr --random-denoiser 0   # the probes' baseline

Each store also holds every prompt's pooled text embedding (the probes' text-only baseline) and, for
a YAML prompt set on a model whose cross-attention keys are its prompt tokens, the token range of
every slot word (instrument, style, mood): the probes' word-aligned cross-attention features.
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("capture", help="capture attention maps into a Zarr store", **formatter(HELP))
    add_model_argument(parser)
    parser.add_argument("--prompts", required=True, help="a YAML prompt set or a text file, one prompt per line")
    parser.add_argument("--store", required=True, help="output store (path or fsspec URL), e.g. maps.zarr")
    parser.add_argument("--layers", default="*", help="layer spec (default: every module), e.g. cross:* or 8-14")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per prompt (default 10)")
    parser.add_argument("--timesteps", default="all", help="step indices to keep, e.g. 0,5,9 (default all)")
    parser.add_argument("--reduce", default="", help="e.g. heads=mean,grid=16x4,batch=cond")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0, help="initial noise seed: prompt i starts from --seed + i")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--seed-per-prompt", dest="shared_noise", action="store_false", default=False,
                       help="prompt i starts from noise --seed + i (the default): probes must read the attribute "
                            "through the sampling noise, not from the prompt alone")
    noise.add_argument("--shared-noise", action="store_true",
                       help="every prompt starts from the same noise --seed: the confounded protocol (any prompt "
                            "dependence becomes decodable, even a random denoiser's); for comparison only")
    parser.add_argument("--random-denoiser", type=int, metavar="SEED",
                        help="capture a freshly initialised denoiser (seeded) instead of the trained one: "
                             "the baseline of `melodia probe --random-baseline`")
    parser.add_argument("--overwrite", action="store_true", help="replace a store of another run at --store")
    parser.set_defaults(run=run)


def parse_reduction(text: str):
    """'heads=all,grid=8x4' -> Reduction."""
    from probing.errors import MelodiaError
    from probing.maps import Reduction

    options: dict = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key == "grid":
            try:
                options["grid"] = None if value == "none" else tuple(int(v) for v in value.split("x"))
            except ValueError:
                raise MelodiaError(f"--reduce grid={value}: expected TIMExFREQ such as 16x4, or none") from None
        elif key in ("heads", "batch"):
            options[key] = value
        else:
            raise MelodiaError(f"--reduce: unknown option {key!r} (heads, grid, batch)")
    try:
        return Reduction(**options)
    except ValueError as error:
        raise MelodiaError(f"--reduce: {error}") from None


def parse_step_indices(text: str) -> tuple[int, ...] | None:
    from probing.errors import MelodiaError

    if text == "all":
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise MelodiaError(f"--timesteps {text!r}: expected step indices such as 0,5,9 or 'all'") from None


def run(args) -> None:
    from probing.prompts import load_prompts

    prompts = load_prompts(args.prompts)  # the inputs first: one line, before torch loads
    step_indices = parse_step_indices(args.timesteps)
    from probing.capture import CaptureSettings, capture
    from probing.models import load_model

    settings = CaptureSettings(layers=args.layers, steps=args.steps, step_indices=step_indices,
                               guidance=args.guidance, seed=args.seed, reduction=parse_reduction(args.reduce),
                               random_denoiser=args.random_denoiser, seed_per_prompt=not args.shared_noise)
    model = load_model(args.model, device=args.device)
    store = capture(model, prompts, args.store, settings, overwrite=args.overwrite)
    done = int(store.done_mask().sum())
    print(f"{args.store}: {done}/{len(store.prompts)} prompts, {len(store.specs)} maps per prompt")
