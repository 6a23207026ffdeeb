"""`melodia edit`: change instrument, style or mood of a clip while its melody and rhythm stay."""
from __future__ import annotations

from pathlib import Path

from editing.commands.common import (REFINE_HELP, add_model_argument, add_profile_arguments, check_output, formatter,
                                     load_profile, print_json, refinements)
from editing.methods import MAX_SOURCE_SECONDS, METHODS, check_refinements

HELP = """Edit a clip towards a text prompt (Melodia: source self-attention Q/K injected while denoising).

The source is inverted with the empty prompt to --t-start (a fraction of the schedule: DDIM
inversion on DDPM-family models, Euler ODE inversion on flow-matching ones and on Stable Audio
Open's EDM sampler, the latter refined by fixed-point iterations); the edit
denoises from there with the target prompt only (no description of the source needed), the
chosen self-attention layers using the source's Q and K. Writes OUT.wav and OUT.json (settings,
model, timings, seam report); --plot adds source/edited spectrograms side by side. A source longer
than the model's window is edited in windows overlapping by 25 %, joined by crossfades.

layers: auto (with --profile: the band the profile selects; else the model's documented default,
        AudioLDM 2 and the testbed: self:8-14, testbed-dit: self:3-5, Stable Audio Open and
        ACE-Step: self:11-21),
        a layer spec (self:8-14, self:10-12, up, ...; see `melodia layers`), or none
method: melodia (injection)
        | inversion (inversion + regeneration, no injection: the baseline; on DDIM models also `ddim`)
        | sdedit (noise the source to --t-start, denoise with the prompt)
        | ddpm-friendly (DDPM-family models: edit-friendly DDPM inversion, the source's noise maps)
        | flowedit (flow-matching models: FlowEdit, inversion-free, Kulikov et al.)
        (--layers applies to melodia only)

examples:
  melodia synth --instrument piano --seed 3 -o piano.wav
  melodia edit piano.wav --to "a happy waltz played on the violin" -o violin.wav --plot cmp.png
  melodia edit song.wav --model cvssp/audioldm2-music --to "violin solo" --layers self:8-14 -o out.wav
  melodia edit piano.wav --to "a happy waltz played on the violin" --method ddpm-friendly -o ddpm.wav
  melodia edit piano.wav --model testbed-dit --to "a happy waltz played on the violin" -o dit.wav
  melodia edit piano.wav --model testbed-dit --to "violin" --method flowedit -o flowedit.wav
  melodia edit piano.wav --to "violin" --profile profile.json -o auto.wav      # layers from `melodia probe`
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("edit", help="edit a clip with a text prompt", **formatter(HELP))
    parser.add_argument("source", help="audio file (wav, flac, ogg, mp3): mixed to mono, resampled")
    parser.add_argument("--to", required=True, dest="prompt", help="the target prompt")
    parser.add_argument("-o", "--output", required=True, help="output .wav (a .json sidecar is written beside it)")
    add_model_argument(parser)
    parser.add_argument("--layers", default="auto", help="auto | layer spec | none (default auto)")
    add_profile_arguments(parser, "layer profile (`melodia probe`): --layers auto injects the band it selects "
                                  "instead of the family default")
    parser.add_argument("--t-start", type=float, default=0.6, help="inverted fraction of the schedule, (0, 1]")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="melodia", choices=METHODS)
    parser.add_argument("--refine", type=refinements, metavar="N", help=REFINE_HELP)
    parser.add_argument("--no-windows", dest="windows", action="store_false",
                        help="refuse a source longer than the model's window instead of editing it in windows")
    parser.add_argument("--source-prompt", default="", help="ddpm-friendly and flowedit only: a description of "
                        "the source for its noise extraction / source velocity (default: the empty prompt)")
    parser.add_argument("--source-guidance", type=float, default=1.0,
                        help="ddpm-friendly and flowedit only: guidance of the source side (default 1)")
    parser.add_argument("--plot", help="write source/edited spectrograms to this PNG")
    parser.add_argument("--json", action="store_true", help="print the sidecar JSON to stdout")
    parser.set_defaults(run=run)


def run(args) -> None:
    # every input is checked before the model loads (a minute on a busy CPU): profile, audio, outputs
    profile = load_profile(args)
    from editing.audio import read_audio, resample

    check_refinements(args.method, args.refine)  # the editor's own check, before the model loads
    wave, rate = read_audio(args.source, max_seconds=MAX_SOURCE_SECONDS)
    check_output(args.output, ".wav")
    if args.plot:
        check_output(args.plot, ".png")
    from editing.audio import write_wav
    from editing.editor import EditSettings, Melodia
    from editing.plots import plot_spectrograms
    from probing.models import load_model
    from probing.paths import write_json

    model = load_model(args.model, device=args.device)
    source = resample(wave, rate, model.sample_rate, str(args.source), max_seconds=MAX_SOURCE_SECONDS)
    editor = Melodia(model, profile=profile, require_baseline=not args.no_baseline)
    settings = EditSettings(args.prompt, args.method, args.layers, args.t_start, args.steps, args.guidance, args.seed,
                            args.windows, args.source_prompt, args.source_guidance, args.refine)
    result = editor.edit(source, settings, progress=True)
    output = Path(args.output)
    sidecar = {**result.summary(), "source": str(args.source), "model": args.model, "output": str(output),
               "profile": args.profile}
    write_wav(output, result.audio, result.sample_rate)
    write_json(output.with_suffix(".json"), sidecar)
    if args.plot:
        plot_spectrograms({"source": source, "edited": result.audio}, result.sample_rate, args.plot,
                          title=f"{args.method}: {args.prompt}")
    if args.json:
        print_json(sidecar)
    else:
        seams = (f", {len(result.seams) + 1} windows, seam flux ratio {result.seam_flux_ratio:.2f} "
                 f"(source {result.source_seam_flux_ratio:.2f})") if result.seams else ""
        print(f"wrote {output} and {output.with_suffix('.json')} ({sum(result.timings.values()):.1f} s, "
              f"{len(result.injected)} self-attention modules injected{seams})")
