"""`melodia generate`: plain text-to-music through any supported model."""
from __future__ import annotations

from editing.commands.common import add_model_argument, check_output, formatter

HELP = """Generate a clip from a text prompt with the model's own pipeline.

examples:
  melodia generate --prompt "a sad waltz played on the violin" --seed 0 -o out.wav
  melodia generate --model cvssp/audioldm2-music --prompt "jazz piano trio" --steps 100 -o jazz.wav
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("generate", help="text-to-music generation", **formatter(HELP))
    add_model_argument(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("-o", "--output", required=True, help="output .wav")
    parser.set_defaults(run=run)


def run(args) -> None:
    check_output(args.output, ".wav")
    from editing.audio import write_wav
    from probing.models import load_model

    model = load_model(args.model, device=args.device)
    sample_rate = model.sample_rate  # an image pipeline says so now, before generating
    model.pipeline.set_progress_bar_config(disable=False, desc="generating")
    wave = model.generate(args.prompt, args.steps, args.guidance, args.seed)
    write_wav(args.output, wave, sample_rate)
    print(f"wrote {args.output} ({len(wave) / sample_rate:.2f} s at {sample_rate} Hz)")
