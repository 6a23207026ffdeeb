"""The melody metric on the testbed's synth: can it see a kept melody, and what does it cost?

    python benchmarks/melody_metric.py               # 12 pairs; a table, the means, seconds per 10 s clip

Positive control: the source's tune rendered on another instrument (the ideal timbre edit) must
score well above the baseline, another tune on that instrument in the same style. Instruments sit
in their own registers (a cello plays the tune lower than a flute), so raw pitch accuracy counts
the ideal edit's octave shifts as misses and raw chroma accuracy is the metric's headline for timbre
edits. Time: pYIN + mir_eval for one 10 s clip pair, and its ratio to the clip's duration, measured
in this run with one torch/BLAS thread.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from editing.metrics.melody import melody_accuracy, pitch_contour  # noqa: E402
from probing.synth import class_lists, render_clip  # noqa: E402
from probing.synth.render import SAMPLE_RATE  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classes = class_lists()
    rng = np.random.default_rng(args.seed)
    same, other = [], []
    print(f"{'source':>12s} {'target':>12s} {'style':>11s}   same tune (pitch, chroma)   other tune (pitch, chroma)")
    for k in range(args.pairs):
        source_instrument, target = rng.choice(classes["instrument"], 2, replace=False)
        style = classes["style"][k % len(classes["style"])]
        source = render_clip(source_instrument, style, "calm", 100 + k)
        kept = melody_accuracy(source, render_clip(target, style, "calm", 100 + k), SAMPLE_RATE)
        lost = melody_accuracy(source, render_clip(target, style, "calm", 200 + k), SAMPLE_RATE)
        same.append((kept.raw_pitch, kept.raw_chroma))
        other.append((lost.raw_pitch, lost.raw_chroma))
        print(f"{source_instrument:>12s} {target:>12s} {style:>11s}   {kept.raw_pitch:10.2f} {kept.raw_chroma:6.2f}"
              f"          {lost.raw_pitch:12.2f} {lost.raw_chroma:6.2f}")
    same_mean, other_mean = np.mean(same, 0), np.mean(other, 0)
    print(f"mean: same tune raw pitch {same_mean[0]:.3f}, raw chroma {same_mean[1]:.3f}; "
          f"other tune raw pitch {other_mean[0]:.3f}, raw chroma {other_mean[1]:.3f}")

    clip = np.concatenate([render_clip("piano", "waltz", "calm", 3)] * 3)[: 10 * SAMPLE_RATE]
    pitch_contour(clip, SAMPLE_RATE)  # warm-up (numba compiles pYIN's kernels on first use)
    start = time.perf_counter()
    melody_accuracy(clip, clip[::-1].copy(), SAMPLE_RATE)
    seconds = time.perf_counter() - start
    print(f"one 10 s clip pair: {seconds:.2f} s ({seconds / 10:.3f} x real time for the two contours)")


if __name__ == "__main__":
    main()
