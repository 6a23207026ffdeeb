"""Measure a shipped testbed: does it play what it is asked, and does inversion (DDIM / flow ODE) reconstruct?

    python -m editing.testbed_report --out docs/testbed-results [--run runs/testbed] [--per-class 4]
    python -m editing.testbed_report --model testbed-dit --out docs/testbed-dit-results --run runs/testbed-dit

Writes report.json, clips.csv (each generated clip's prompted and heard attributes, for paired comparisons
of two models on the same clips), confusion_instrument.png and (with --run) loss_curve.png. The round trip to noise and
back runs on --inversion-clips clips of different instruments, the same whatever --per-class, once with
the explicit inversion step and once with one fixed-point refinement per step. Adherence is judged
by the independent attribute classifier (librosa features, trained on synthesizer renders, never
on model output); its ceiling is the same classifier on synthesizer renders passed through the
testbed's own codec (log-mel + Griffin-Lim), since every generated clip goes through that decoder.
Two one-step checks on 16 renders (one per instrument; `editing.denoiser_checks`) need no sampler: how
much noise the denoiser removes at flow sigmas 0.05 / 0.2 / 0.5 (1 = none), and whether its prediction
picks the clip's instrument out of all 16 captions (a diffusion classifier; chance 1/16).
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from editing.denoiser_checks import denoising_error, reading_accuracy
from editing.flow import ode_samplers
from probing.models import load_model
from probing.plots import pyplot, write_figure
from probing.synth import caption, class_lists, render_clip, templates
from probing.synth.score import FORMS
from probing.synth.classifier import default_classifier
from probing.testbed.data import stored_form

ATTRIBUTES = ("instrument", "style", "mood")


def sample_labels(per_class: int, seed: int) -> list[dict]:
    """`per_class` items per instrument with random style, mood, template and score seed."""
    rng = np.random.default_rng(seed)
    classes = class_lists()
    items = []
    for instrument in classes["instrument"]:
        for _ in range(per_class):
            items.append({"instrument": instrument, "style": str(rng.choice(classes["style"])),
                          "mood": str(rng.choice(classes["mood"])), "template": int(rng.choice(sorted(templates()))),
                          "score_seed": int(rng.integers(10**6, 2 * 10**6))})
    return items


def inversion_items(count: int, seed: int) -> list[dict]:
    """`count` (1-16) clips of different instruments, spread over the list, for the round trip, whatever --per-class
    is: reports of different sizes, and of different models, invert the same clips."""
    items = sample_labels(1, seed)
    if not 1 <= count <= len(items):
        raise ValueError(f"--inversion-clips takes 1 to {len(items)} (one per instrument), got {count}")
    return [items[round(i)] for i in np.linspace(0, len(items) - 1, count)]


def accuracy(predicted: list[str], truth: list[str]) -> float:
    return float(np.mean([p == t for p, t in zip(predicted, truth)]))


def classify(classifier, waves: list[np.ndarray], sr: int) -> dict[str, list[str]]:
    return {a: [classifier.predict(w, sr, a) for w in waves] for a in ATTRIBUTES}


def generated_clips(model, items: list[dict], steps: int, guidance: float, batch: int, seed: int) -> list[np.ndarray]:
    waves = []
    for start in tqdm(range(0, len(items), batch), desc="generating"):
        chunk = items[start:start + batch]
        prompts = [caption(i["instrument"], i["style"], i["mood"], i["template"]) for i in chunk]
        generator = torch.Generator().manual_seed(seed + start)
        waves += list(model.pipeline(prompts, num_inference_steps=steps, guidance_scale=guidance,
                                     generator=generator).audios)
    return waves


def rendered(items: list[dict], form: str = "walk") -> list[np.ndarray]:
    """The synthesizer's renders of `items` (their notes from `score_seed`, a tune in `form`)."""
    return [render_clip(i["instrument"], i["style"], i["mood"], i["score_seed"], form=form) for i in items]


def codec_round_trips(model, sources: list[np.ndarray]) -> list[np.ndarray]:
    return [model.decode(model.encode_audio(w)) for w in tqdm(sources, desc="codec round trips")]


def log_mel_l1(model, a: np.ndarray, b: np.ndarray) -> float:
    codec = model.pipeline.codec
    return float((codec.log_mel(torch.from_numpy(a)[None]) - codec.log_mel(torch.from_numpy(b)[None])).abs().mean())


def reconstruction(model, sources: list[np.ndarray], steps: int, refines: tuple[int, ...] = (0,)) -> list[dict]:
    """Empty-prompt inversion (DDIM, or the flow ODE; each of `refines` fixed-point iterations per step) to pure
    noise and back (guidance 1) vs the codec round trip: one result per entry of `refines`."""
    invert, sample = ode_samplers(model)
    empty = model.encode_prompt([""], guidance=1.0)
    latent_l1, audio_l1, codec_l1 = {r: [] for r in refines}, {r: [] for r in refines}, []
    for wave in tqdm(sources, desc="inversion round trips"):
        z0 = model.encode_audio(wave)
        codec_l1.append(log_mel_l1(model, wave, model.decode(z0)))
        for refine in refines:
            z_back = sample(model, invert(model, z0, empty, steps, refine=refine), empty, steps)
            latent_l1[refine].append(float((z_back - z0).abs().mean()) * model.pipeline.codec.mel_std)  # log-mel units
            audio_l1[refine].append(log_mel_l1(model, wave, model.decode(z_back)))
    return [{"inversion_latent_log_mel_l1": float(np.mean(latent_l1[r])),
             "inversion_audio_log_mel_l1": float(np.mean(audio_l1[r])),
             "codec_round_trip_log_mel_l1": float(np.mean(codec_l1)), "clips": len(sources), "steps": steps,
             "inversion_refinements": r} for r in refines]


def one_step_checks(model, seed: int) -> dict:
    """Denoising error and prompt reading (instrument) on one render per instrument, captioned by template 0."""
    items = sample_labels(1, seed)
    instruments = class_lists()["instrument"]
    z0 = torch.cat([model.encode_audio(w) for w in rendered(items)])
    truth = [i["instrument"] for i in items]
    own = [caption(i["instrument"], i["style"], i["mood"], 0) for i in items]
    read = reading_accuracy(model, z0, truth, instruments, lambda c, n: caption(c, items[n]["style"], items[n]["mood"], 0),
                            seed=seed)
    return {"denoising_error": {str(k): v for k, v in denoising_error(model, z0, own, seed=seed).items()},
            "prompt_reading_instrument": read, "clips": len(items)}


def write_clip_rows(items: list[dict], heard: dict[str, list[str]], path: Path) -> None:
    """One row per generated clip: its prompt's labels and template, and what the classifier heard."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clip", *ATTRIBUTES, "template", *(f"heard_{a}" for a in ATTRIBUTES)])
        for n, item in enumerate(items):
            writer.writerow([n, *(item[a] for a in ATTRIBUTES), item["template"], *(heard[a][n] for a in ATTRIBUTES)])


def plot_confusion(truth: list[str], predicted: list[str], classes: list[str], path: Path, title: str) -> None:
    plt = pyplot()
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)))
    for t, p in zip(truth, predicted):
        matrix[index[t], index[p]] += 1
    matrix /= matrix.sum(axis=1, keepdims=True).clip(min=1)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("classifier's verdict")
    ax.set_ylabel("prompted")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    write_figure(fig, path)


LOSS_LABELS = {"unet": "min-SNR weighted eps MSE", "dit": "rectified-flow velocity MSE"}


def plot_loss(run: Path, path: Path) -> None:
    """The training run's loss curve; the labels name the objective of the run's architecture and its batch."""
    state_path = run / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    arch, batch = state.get("arch", "unet"), state.get("recipe", {}).get("batch", 32)
    plt = pyplot()
    with (run / "loss.csv").open() as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    steps, losses = np.array(rows).T
    window = min(50, len(losses))
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, losses, alpha=0.3, label="batch loss")
    ax.plot(steps[window - 1:], smooth, label=f"mean of {window}")
    ax.set_xlabel(f"step (batch {batch})")
    ax.set_ylabel(LOSS_LABELS[arch])
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    write_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="testbed")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", type=Path, help="training run folder with loss.csv")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--inversion-clips", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--form", choices=FORMS, default=None,
                        help="tune form of the rendered clips (codec ceiling, round trip); default: the form of "
                             "--run's training data, else walk")
    args = parser.parse_args(argv)
    if args.form is None:
        data = args.run / "data.npz" if args.run else None
        args.form = stored_form(data) if data and data.is_file() else "walk"
    args.out.mkdir(parents=True, exist_ok=True)
    model = load_model(args.model)
    classifier = default_classifier()
    items = sample_labels(args.per_class, args.seed)
    truth = {a: [i[a] for i in items] for a in ATTRIBUTES}
    generated = classify(classifier, generated_clips(model, items, args.steps, args.guidance, 16, args.seed),
                         model.sample_rate)
    round_trips = codec_round_trips(model, rendered(items, args.form))
    inversion = inversion_items(args.inversion_clips, args.seed)
    plain, refined = reconstruction(model, rendered(inversion, args.form), 50, refines=(0, 1))
    ceiling = classify(classifier, round_trips, model.sample_rate)
    report = {
        "model": args.model, "form": args.form, "clips": len(items), "steps": args.steps, "guidance": args.guidance,
        "chance": {a: 1 / len(class_lists()[a]) for a in ATTRIBUTES},
        "generated_accuracy": {a: accuracy(generated[a], truth[a]) for a in ATTRIBUTES},
        "codec_ceiling_accuracy": {a: accuracy(ceiling[a], truth[a]) for a in ATTRIBUTES},
        "generated_instrument_accuracy_per_class": {
            c: accuracy([p for p, t in zip(generated["instrument"], truth["instrument"]) if t == c], [c] * args.per_class)
            for c in class_lists()["instrument"]},
        "reconstruction": plain | {"instruments": [i["instrument"] for i in inversion]},
        "reconstruction_refined": refined,
        "one_step": one_step_checks(model, args.seed),
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    write_clip_rows(items, generated, args.out / "clips.csv")
    plot_confusion(truth["instrument"], generated["instrument"], class_lists()["instrument"],
                   args.out / "confusion_instrument.png", f"{args.model} generations: instrument")
    if args.run is not None:
        plot_loss(args.run, args.out / "loss_curve.png")
    print(json.dumps({k: report[k] for k in ("generated_accuracy", "codec_ceiling_accuracy", "reconstruction",
                                             "reconstruction_refined", "one_step")},
                     indent=1))


if __name__ == "__main__":
    main()
