"""`melodia synth`: render a synthetic clip (the testbed's data and every edit's ground truth)."""
from __future__ import annotations

from editing.commands.common import check_output, formatter, print_json

HELP = """Render one synthetic clip: a melody (from --score-seed) played with an instrument, style and mood.

examples:
  melodia synth --instrument piano --style waltz --mood happy --seed 3 -o src.wav
  melodia synth --instrument violin --style waltz --mood happy --seed 3 -o ideal.wav   # same melody, violin
  melodia synth --style staccato --form aaba -o motifs.wav          # a tune of repeated two-note motifs
  melodia synth --list --json                                                        # the class lists
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("synth", help="render a synthetic clip", **formatter(HELP))
    parser.add_argument("--instrument", default="piano")
    parser.add_argument("--style", default="waltz")
    parser.add_argument("--mood", default="happy")
    parser.add_argument("--seed", type=int, default=0, help="render seed (and the melody, unless --score-seed)")
    parser.add_argument("--score-seed", type=int, default=None, help="melody seed: hold it to keep the melody")
    parser.add_argument("--form", default="walk", help="the tune's form: walk (never repeats itself) or aaba "
                        "(two-note motifs played A A B A, C C D C, ...)")
    parser.add_argument("-o", "--output", help="output .wav")
    parser.add_argument("--list", action="store_true", help="print the instrument/style/mood classes")
    parser.add_argument("--json", action="store_true", help="with --list: JSON output")
    parser.set_defaults(run=run)


def run(args) -> None:
    from probing.errors import MelodiaError
    from probing.synth import SAMPLE_RATE, class_lists, make_score, render

    if args.list:
        classes = class_lists()
        if args.json:
            print_json(classes)
        else:
            for attribute, names in classes.items():
                print(f"{attribute} ({len(names)}): {', '.join(names)}")
        return
    if not args.output:
        raise MelodiaError("give an output file with -o OUT.wav (or --list to see the classes)")
    check_output(args.output, ".wav")
    from editing.audio import write_wav

    try:
        score = make_score(args.seed if args.score_seed is None else args.score_seed, args.style, args.mood,
                           form=args.form)
        wave = render(score, args.instrument, seed=args.seed)
    except ValueError as error:
        raise MelodiaError(str(error)) from None
    write_wav(args.output, wave, SAMPLE_RATE)
    print(f"wrote {args.output} ({len(wave) / SAMPLE_RATE:.2f} s, {args.instrument}, {args.style}, {args.mood}, "
          f"{len(score.notes)} notes, {score.form} tune)")
