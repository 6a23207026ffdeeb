"""`melodia demo`: the main job on the shipped testbed: synth a melody, edit it, compare to the truth."""
from __future__ import annotations

from pathlib import Path

from editing.commands.common import add_output_argument, formatter, print_json
from probing.models import SHIPPED_NAMES

HELP = """Synthesize a melody, edit it to another instrument with the testbed, and compare with the ideal.

The synthesizer renders the same score with the target instrument, so every testbed edit has a
ground truth. Writes into -o DIR: source.wav, melodia.wav, the baseline without injection
(ddim.wav on the UNet testbed, inversion.wav on the DiT testbed), ideal.wav, comparison.png and
metrics.json, and prints the metrics.

examples:
  melodia demo
  melodia demo --source piano --target violin --style waltz --mood happy --seed 3 -o demo/
  melodia demo --model testbed-v2 -o demo-v2/                  # the UNet v2: crisper edits
  melodia demo --model testbed-dit --steps 25 -o demo-dit/      # the flow-matching DiT testbed
"""


def add_parser(sub) -> None:
    parser = sub.add_parser("demo", help="synth -> edit -> compare, on the testbed", **formatter(HELP))
    parser.add_argument("--model", default="testbed", choices=SHIPPED_NAMES,
                        help="the UNet testbed (default), its v2 (finer attention, slower) or the flow-matching DiT")
    parser.add_argument("--source", default="piano", help="source instrument")
    parser.add_argument("--target", default="violin", help="target instrument")
    parser.add_argument("--style", default="waltz")
    parser.add_argument("--mood", default="happy")
    parser.add_argument("--seed", type=int, default=3, help="score seed: the melody")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--t-start", type=float, default=0.6)
    add_output_argument(parser, "output folder (default: demo/)", metavar="DIR", default="demo")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(run=run)


def run(args) -> None:
    from editing.audio import write_wav
    from probing.paths import write_json
    from editing.editor import Melodia
    from editing.metrics import chroma_similarity, log_mel_distance, melody_accuracy
    from editing.plots import plot_spectrograms
    from probing.errors import MelodiaError
    from probing.models import load_model
    from probing.synth import caption, render_clip
    from probing.synth.classifier import default_classifier

    try:
        source = render_clip(args.source, args.style, args.mood, args.seed)
        ideal = render_clip(args.target, args.style, args.mood, args.seed)
    except ValueError as error:
        raise MelodiaError(str(error)) from None
    model = load_model(args.model)
    editor = Melodia(model)
    prompt = caption(args.target, args.style, args.mood, 0)
    clips = {"source": source}
    for method in ("melodia", "inversion" if editor.flow else "ddim"):
        clips[method] = editor.edit(source, prompt, method=method, t_start=args.t_start, steps=args.steps,
                                    progress=True).audio
    clips["ideal"] = ideal
    classifier, sr = default_classifier(), model.sample_rate
    metrics = {"model": args.model, "prompt": prompt, "source_instrument": args.source, "target_instrument": args.target,
               "layers": model.default_edit_layers, "t_start": args.t_start, "steps": args.steps, "clips": {}}
    for name, wave in clips.items():
        metrics["clips"][name] = {"classifier_instrument": classifier.predict(wave, sr, "instrument"),
                                  "chroma_similarity_to_source": chroma_similarity(source, wave, sr),
                                  "melody_raw_chroma_to_source": melody_accuracy(source, wave, sr).raw_chroma,
                                  "log_mel_distance_to_ideal": log_mel_distance(wave, ideal, sr)}
    out = Path(args.out)
    for name, wave in clips.items():
        write_wav(out / f"{name}.wav", wave, sr)
    plot_spectrograms(clips, sr, out / "comparison.png", title=prompt)
    write_json(out / "metrics.json", metrics)
    if args.json:
        print_json(metrics)
        return
    print(f"{args.source} -> {args.target} ({args.style}, {args.mood}, melody seed {args.seed}): '{prompt}'")
    print(f"{'clip':9s} {'classifier says':>16s} {'chroma vs source ↑':>19s} {'melody vs source ↑':>19s} "
          f"{'log-mel to ideal ↓':>19s}")
    for name, row in metrics["clips"].items():
        print(f"{name:9s} {row['classifier_instrument']:>16s} {row['chroma_similarity_to_source']:>19.3f} "
              f"{row['melody_raw_chroma_to_source']:>19.3f} {row['log_mel_distance_to_ideal']:>19.3f}")
    print("↑ higher is better (chroma: 1 = the source's pitch classes at the same times; melody: the share of the "
          "source's voiced 10 ms frames whose pitch class the clip keeps); ↓ lower is better (0 = the ideal)")
    print(f"wrote {out}/: {', '.join(f'{n}.wav' for n in clips)}, comparison.png, metrics.json")
