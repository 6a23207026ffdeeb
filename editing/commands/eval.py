"""`melodia eval`: score one edit (source, edited, prompt) with every metric of the suite that can run."""
from __future__ import annotations

from editing.commands.common import formatter, print_json

HELP = """Score one edit: text adherence (CLAP), structure (LPAPS, Chroma), testbed classifier and ideal edit.

Learned metrics need weights that melodia does not ship: CLAP (default laion/larger_clap_music,
from the local Hugging Face cache, or --clap DIR) and LPAPS (--lpaps FILE, SpecVQGAN's LPAPS
state dict). A metric whose default weights are not here is reported "unavailable: <reason>",
never as a number; weights named with --clap/--lpaps that cannot be read are an error (exit 2).
FAD, ASB and AMB compare many edits or methods and are listed as unavailable for one pair.
Details of every metric: docs/metrics.md.

examples:
  melodia synth --instrument piano --seed 3 -o src.wav
  melodia synth --instrument violin --seed 3 -o ideal.wav
  melodia edit src.wav --to "a happy waltz played on the violin" -o out.wav
  melodia eval --source src.wav --edited out.wav --prompt "violin" --ideal ideal.wav
  melodia eval --source src.wav --edited out.wav --prompt "violin" --clap clap/ --lpaps lpaps.pth --json
"""

def add_parser(sub) -> None:
    parser = sub.add_parser("eval", help="score one edit with the metric suite", **formatter(HELP))
    parser.add_argument("--source", required=True, help="the clip that was edited (any readable audio)")
    parser.add_argument("--edited", required=True, help="the edit")
    parser.add_argument("--prompt", required=True, help="the target prompt of the edit")
    parser.add_argument("--ideal", help="the ground-truth edit (testbed: the same score rendered on the target)")
    parser.add_argument("--clap", metavar="CHECKPOINT",
                        help="CLAP checkpoint: Hugging Face id in the local cache or a save_pretrained folder "
                             "(default: laion/larger_clap_music if cached, else unavailable)")
    parser.add_argument("--lpaps", metavar="WEIGHTS", help="LPAPS weights file (.safetensors, .pt, .pth)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(run=run)


def run(args) -> None:
    from editing.audio import load_audio
    from editing.metrics import DEFAULT_CLAP, load_clap, load_lpaps, score_edit
    from probing.errors import MelodiaError

    if not args.prompt.strip():
        raise MelodiaError("--prompt is empty: give the target prompt of the edit, e.g. --prompt violin")
    rate = native_rate(args.edited)
    clips = {name: load_audio(path, rate) for name, path in
             (("source", args.source), ("edited", args.edited), ("ideal", args.ideal)) if path}
    clap = load_clap(args.clap) if args.clap else DEFAULT_CLAP
    lpaps = load_lpaps(args.lpaps) if args.lpaps else None
    scores = score_edit(clips["source"], clips["edited"], rate, args.prompt, clap=clap, lpaps=lpaps,
                        ideal=clips.get("ideal"))
    report = {"source": args.source, "edited": args.edited, "prompt": args.prompt, "ideal": args.ideal,
              "metrics": scores}
    if args.json:
        print_json(report)
        return
    print(f"{args.edited} (edit of {args.source}) for '{args.prompt}'")
    for name, score in scores.items():
        print(f"  {name:24s} {_describe(score)}")


def native_rate(path: str, fallback: int = 16_000) -> int:
    """The sample rate of an audio file as libsndfile reads it; `fallback` when it cannot.

    Every clip is read at the edited clip's own rate and each metric resamples to its own: a
    needless round trip through another rate moves some features (the testbed classifier's).
    An unreadable or missing file gets the fallback here and its one-line error from load_audio.
    """
    import soundfile as sf

    try:
        return int(sf.info(path).samplerate)
    except (sf.LibsndfileError, RuntimeError):
        return fallback


def _describe(score: dict) -> str:
    if "unavailable" in score:
        return f"unavailable: {score['unavailable']}"
    better = "higher" if score["higher_is_better"] else "lower"
    extra = "".join(f", {key} {value}" for key, value in score.items()
                    if key not in ("value", "higher_is_better", "compares"))
    return f"{score['value']:.4f}  ({better} is better; {score['compares']}{extra})"
