"""`melodia edit`: change instrument, style or mood of a clip while its melody and rhythm stay."""
from __future__ import annotations

import json
from pathlib import Path

from editing.commands.common import add_model_argument, formatter, print_json

HELP = """Edit a clip towards a text prompt (Melodia: source self-attention Q/K injected while denoising).

The source is inverted with the empty prompt to --t-start (a fraction of the schedule); the edit
denoises from there with the target prompt only (no description of the source needed), the
chosen self-attention layers using the source's Q and K. Writes OUT.wav and OUT.json (settings,
model, timings); --plot adds source/edited spectrograms side by side.

layers: auto (the model's documented default: AudioLDM 2 and the testbed: self:8-14),
        a layer spec (self:8-14, self:10-12, up, ...; see `melodia layers`), or none
method: melodia (injection) | ddim (inversion + regeneration, no injection: the baseline)

examples:
  melodia synth --instrument piano --seed 3 -o piano.wav
  melodia edit piano.wav --to "a happy waltz played on the violin" -o violin.wav --plot cmp.png
  melodia edit song.wav --model cvssp/audioldm2-music --to "violin solo" --layers self:8-14 -o out.wav
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("edit", help="edit a clip with a text prompt", **formatter(HELP))
    parser.add_argument("source", help="audio file (wav, flac, ogg, mp3): mixed to mono, resampled")
    parser.add_argument("--to", required=True, dest="prompt", help="the target prompt")
    parser.add_argument("-o", "--output", required=True, help="output .wav (a .json sidecar is written beside it)")
    add_model_argument(parser)
    parser.add_argument("--layers", default="auto", help="auto | layer spec | none (default auto)")
    parser.add_argument("--t-start", type=float, default=0.6, help="inverted fraction of the schedule, (0, 1]")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="melodia", choices=("melodia", "ddim"))
    parser.add_argument("--plot", help="write source/edited spectrograms to this PNG")
    parser.add_argument("--json", action="store_true", help="print the sidecar JSON to stdout")
    parser.set_defaults(run=run)


def write_json(path: Path, data: dict) -> None:
    """JSON through a temporary file and rename: never half-written."""
    from editing.audio import atomic_output

    with atomic_output(path, ".json") as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)


def run(args) -> None:
    from editing.audio import load_audio, write_wav
    from editing.editor import Melodia
    from editing.plots import plot_spectrograms
    from probing.models import load_model

    model = load_model(args.model, device=args.device)
    window = getattr(model, "clip_samples", None)
    source = load_audio(args.source, model.sample_rate,
                        max_seconds=None if window is None else window / model.sample_rate)
    result = Melodia(model).edit(source, args.prompt, method=args.method, layers=args.layers, t_start=args.t_start,
                                 steps=args.steps, guidance=args.guidance, seed=args.seed, progress=True)
    output = Path(args.output)
    sidecar = {**result.summary(), "source": str(args.source), "model": args.model, "output": str(output)}
    write_wav(output, result.audio, result.sample_rate)
    write_json(output.with_suffix(".json"), sidecar)
    if args.plot:
        plot_spectrograms({"source": source, "edited": result.audio}, result.sample_rate, args.plot,
                          title=f"{args.method}: {args.prompt}")
    if args.json:
        print_json(sidecar)
    else:
        print(f"wrote {output} and {output.with_suffix('.json')} ({sum(result.timings.values()):.1f} s, "
              f"{len(result.injected)} self-attention modules injected)")
