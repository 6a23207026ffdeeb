"""Train a testbed on synthetic music: resumable, time-boxed, exports a diffusers pipeline.

    python -m probing.testbed.train --run runs/testbed --minutes 85 --out probing/testbed/weights
    python -m probing.testbed.train --arch dit --run runs/testbed-dit --minutes 85 --out probing/testbed/weights_dit

`--arch unet` (the UNet/DDIM testbed) learns what its scheduler predicts (v2: v, v1: eps) with
min-SNR weighting; `--arch dit` (the flow-matching DiT testbed) learns the rectified-flow velocity
eps - x0 at sigma drawn from a logit-normal (Esser et al. 2024), x_sigma = (1 - sigma) x0 + sigma eps.
`--decay-steps N` decays the learning rate along a cosine to a tenth of `--lr` at step N (constant
without it); `--init-from FOLDER --matching-only` starts from the tensors of an exported pipeline whose
names and shapes match (e.g. v1's weights for v2: every block but the latent's in/out convolutions).

Re-running the same command resumes from `<run>/checkpoint`, which keeps the run's recipe (batch, learning
rate, schedule, seed): a flag left out when resuming or exporting takes the checkpoint's value. A checkpoint (weights, EMA, optimiser)
is four times the model; to go on where only an export survives (another machine, a later working
period), `--continue-from EXPORT` starts from its EMA weights at the step its `training.json` records,
with the recipe recorded there (what is not given on the command line) and so on the same learning-rate
schedule, with a fresh optimiser warmed up again over WARMUP_STEPS. The rendered training set is cached
in `<run>/data.npz`; losses go to `<run>/loss.csv`; the export (EMA weights) is written to a
temporary folder and renamed into place, so `--out` is never half-written.
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from tqdm import tqdm

from probing.synth import caption, class_lists, templates
from probing.synth.score import FORMS
from probing.testbed.build import UNET_CODEC, build_untrained
from probing.testbed.codec import MelCodec
from probing.testbed.data import ATTRIBUTES, TestbedData, caption_vocabulary, render_dataset
from probing.testbed.dit import TestbedDiTPipeline, build_untrained_dit
from probing.testbed.pipeline import TestbedPipeline

# (builder, pipeline class, denoiser attribute, codec settings)
ARCHITECTURES = {"unet": (build_untrained, TestbedPipeline, "unet", UNET_CODEC),
                 "dit": (build_untrained_dit, TestbedDiTPipeline, "transformer", {})}

CAPTION_DROPOUT = 0.1  # empty caption, so classifier-free guidance works
MIN_SNR_GAMMA = 5.0
WARMUP_STEPS = 200
TRAINING_RECORD = "training.json"  # beside an export: the step and recipe that made it


class Trainer:
    """One training run: model, optimiser, EMA, data; `checkpoint()`/`resume()` round-trip all of it."""

    def __init__(self, run: Path, data: TestbedData, words: list[str], lr: float, batch: int, seed: int,
                 arch: str = "unet", decay_steps: int | None = None):
        self.run, self.data, self.words, self.batch, self.arch = run, data, words, batch, arch
        build, self.pipeline_class, denoiser, codec_settings = ARCHITECTURES[arch]
        self.codec = MelCodec(mel_mean=data.mel_mean, mel_std=data.mel_std, **codec_settings)
        self.pipe = build(words, seed=seed, codec=self.codec)
        self.modules = {denoiser: getattr(self.pipe, denoiser), "text_encoder": self.pipe.text_encoder}
        params = [p for m in self.modules.values() for p in m.parameters()]
        self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
        self.ema = {name: copy.deepcopy(m).requires_grad_(False) for name, m in self.modules.items()}
        self.step = self.warmup_start = 0
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.classes = class_lists()
        self.template_ids = sorted(templates())
        self.lr, self.decay_steps = lr, decay_steps

    def captions(self, label_rows: np.ndarray) -> list[str]:
        out = []
        for row in label_rows:
            if self.rng.random() < CAPTION_DROPOUT:
                out.append("")
                continue
            names = [self.classes[a][i] for a, i in zip(ATTRIBUTES, row)]
            out.append(caption(*names, int(self.rng.choice(self.template_ids)), alias_rng=self.rng))
        return out

    def diffusion_loss(self, x0: torch.Tensor, noise: torch.Tensor, hidden: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
        alphas = self.pipe.scheduler.alphas_cumprod.float()
        t = torch.from_numpy(self.rng.integers(0, len(alphas), self.batch))
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        out = self.pipe.unet(xt, t, encoder_hidden_states=hidden, encoder_attention_mask=mask).sample
        snr = a.flatten() / (1 - a.flatten())
        # min-SNR-gamma weighting (Hang et al. 2023), in each target's own form: eps-loss x snr = x0-loss,
        # v-loss x (snr + 1) = x0-loss, so both weight the x0 error by min(snr, gamma)
        if self.pipe.scheduler.config.prediction_type == "v_prediction":
            target, weight = a.sqrt() * noise - (1 - a).sqrt() * x0, snr.clamp(max=MIN_SNR_GAMMA) / (snr + 1)
        else:
            target, weight = noise, snr.clamp(max=MIN_SNR_GAMMA) / snr
        return (weight * F.mse_loss(out, target, reduction="none").mean(dim=(1, 2, 3))).mean()

    def flow_loss(self, x0: torch.Tensor, noise: torch.Tensor, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x0, noise = self.pipe.to_sequence(x0), self.pipe.to_sequence(noise)
        sigma = torch.sigmoid(torch.from_numpy(self.rng.standard_normal(self.batch).astype(np.float32)))
        s = sigma.view(-1, 1, 1)
        xt = (1 - s) * x0 + s * noise
        v = self.pipe.transformer(hidden_states=xt, encoder_hidden_states=hidden, encoder_attention_mask=mask.bool(),
                                  timestep=sigma).sample
        return F.mse_loss(v, noise - x0)

    def learning_rate(self) -> float:
        """WARMUP_STEPS of warm-up (from `warmup_start`), then constant or (with `decay_steps`) a cosine to lr / 10."""
        warmup = min(1.0, (self.step - self.warmup_start + 1) / WARMUP_STEPS)
        if self.decay_steps is None:
            return self.lr * warmup
        progress = min(1.0, self.step / self.decay_steps)
        return self.lr * warmup * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))  # a float: the optimiser
        # state is saved and must load with torch.load(weights_only=True), which refuses numpy scalars

    def train_step(self) -> float:
        index = self.rng.integers(0, len(self.data.mels), self.batch)
        x0 = self.data.latents(self.codec, index)
        hidden, mask = self.pipe.encode_prompt(self.captions(self.data.labels[index]))
        noise = torch.from_numpy(self.rng.standard_normal(x0.shape).astype(np.float32))
        loss = (self.flow_loss if self.arch == "dit" else self.diffusion_loss)(x0, noise, hidden, mask)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], 1.0)
        self.optimizer.step()
        self.update_ema()
        self.step += 1
        return float(loss.detach())

    @torch.no_grad()
    def update_ema(self) -> None:
        decay = min(0.999, (1 + self.step) / (10 + self.step))
        for name, module in self.modules.items():
            for average, value in zip(self.ema[name].parameters(), module.parameters()):
                average.mul_(decay).add_(value.detach(), alpha=1 - decay)

    @property
    def recipe(self) -> dict:
        """What a later run needs to go on the same way (RECIPE_DEFAULTS' keys)."""
        return {"arch": self.arch, "clips": len(self.data.labels), "seed": self.seed, "batch": self.batch,
                "lr": self.lr, "decay_steps": self.decay_steps}

    def checkpoint(self) -> None:
        tmp = self.run / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, module in self.modules.items():
            save_model(module, tmp / f"{name}.safetensors")
            save_model(self.ema[name], tmp / f"ema_{name}.safetensors")
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        state = {"step": self.step, "warmup_start": self.warmup_start, "words": self.words, "arch": self.arch,
                 "form": self.data.form, "recipe": self.recipe, "rng": self.rng.bit_generator.state}
        (tmp / "state.json").write_text(json.dumps(state))
        final = self.run / "checkpoint"
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def resume(self) -> bool:
        folder = self.run / "checkpoint"
        if not (folder / "state.json").exists():
            return False
        state = json.loads((folder / "state.json").read_text())
        if state.get("arch", "unet") != self.arch:
            raise SystemExit(f"{folder} is a checkpoint of the {state.get('arch', 'unet')} testbed, not {self.arch}")
        if state["words"] != self.words:
            raise SystemExit(f"{folder} was trained on another caption vocabulary; use a new --run folder")
        if state.get("form", self.data.form) != self.data.form:  # checkpoints before forms name none
            raise SystemExit(f"{folder} was trained on {state['form']!r} tunes, this run's data.npz holds "
                             f"{self.data.form!r}; use a new --run folder")
        for name, module in self.modules.items():
            load_model(module, folder / f"{name}.safetensors")
            load_model(self.ema[name], folder / f"ema_{name}.safetensors")
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.step, self.warmup_start = state["step"], state.get("warmup_start", 0)
        self.rng.bit_generator.state = state["rng"]
        return True

    def init_from(self, folder: Path, matching_only: bool = False) -> list[str]:
        """Start from an exported pipeline's weights (model and EMA; fresh optimiser), e.g. to train on.

        With `matching_only`, copy only the tensors whose names and shapes match (another fold or
        head: v1 -> v2) and return the names left at their initialisation.
        """
        source = self.pipeline_class.from_pretrained(folder)
        if source.tokenizer.get_vocab() != self.pipe.tokenizer.get_vocab():
            raise SystemExit(f"{folder} has another caption vocabulary than this run")
        theirs, ours = (source.codec.mel_mean, source.codec.mel_std), (self.data.mel_mean, self.data.mel_std)
        if abs(theirs[0] - ours[0]) > 1e-3 or abs(theirs[1] - ours[1]) > 1e-3:
            raise SystemExit(f"{folder} normalises log-mels with mean, std {theirs[0]:.4f}, {theirs[1]:.4f}, this run's "
                             f"data.npz with {ours[0]:.4f}, {ours[1]:.4f}; a new --run folder renders its data with "
                             "the weights' normalisation")
        skipped = []
        for name, module in self.modules.items():
            state = getattr(source, name).state_dict()
            if matching_only:
                own = module.state_dict()
                skipped += [f"{name}.{k}" for k, v in own.items() if k not in state or state[k].shape != v.shape]
                state = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
            module.load_state_dict(state, strict=not matching_only)
            self.ema[name].load_state_dict(state, strict=not matching_only)
        return skipped

    def continue_from(self, folder: Path) -> int:
        """Go on training an export: its EMA weights, at the step its training record gives; returns that step.

        The schedule goes on from that step; the optimiser starts afresh, so the learning rate warms up
        again, and the batches are drawn from a generator seeded with (seed, step).
        """
        record = training_record(folder)
        if record["arch"] != self.arch or record["form"] != self.data.form:
            raise SystemExit(f"{folder} is the {record['arch']} testbed trained on {record['form']!r} tunes; this "
                             f"run trains the {self.arch} testbed on {self.data.form!r} tunes")
        self.init_from(folder)
        self.step = self.warmup_start = int(record["step"])
        self.rng = np.random.default_rng([self.seed, self.step])
        return self.step

    def export(self, out: Path) -> TestbedPipeline | TestbedDiTPipeline:
        """Save the EMA weights as a diffusers pipeline folder (safetensors) with its training record, atomically."""
        for name, module in self.modules.items():
            module.load_state_dict(self.ema[name].state_dict())
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.pipe.save_pretrained(tmp, safe_serialization=True)
        record = {"step": self.step, "form": self.data.form, **self.recipe}
        (tmp / TRAINING_RECORD).write_text(json.dumps(record, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        return self.pipe


def training_record(folder: Path) -> dict:
    """The step, tune form and recipe an export was trained with (its training.json)."""
    path = folder / TRAINING_RECORD
    if not path.exists():
        raise SystemExit(f"{folder} has no {TRAINING_RECORD} (it was exported before exports recorded their "
                         "step); --init-from starts a new schedule from its weights")
    return json.loads(path.read_text())


# the recipe's defaults, for the flags a command leaves out where neither a checkpoint nor an export gives them
RECIPE_DEFAULTS = {"arch": "unet", "clips": 6000, "seed": 0, "batch": 32, "lr": 6e-4, "decay_steps": None}


def fill_recipe(args: argparse.Namespace) -> dict:
    """Set each recipe flag the command left out: from the run's checkpoint when it has one (resuming, exporting),
    else from --continue-from's training record, else RECIPE_DEFAULTS. Returns where they came from."""
    state_path = args.run / "checkpoint" / "state.json"
    if state_path.exists():  # checkpoints before recipes were saved give only their arch
        state = json.loads(state_path.read_text())
        source = {"arch": state.get("arch", "unet"), **state.get("recipe", {})}
    elif args.continue_from is not None:
        source = training_record(args.continue_from)
    else:
        source = {}
    for key, default in RECIPE_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, source.get(key, default))
    return source


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None,
                        help="unet (default): the DDIM UNet testbed; dit: the flow-matching DiT testbed")
    parser.add_argument("--run", type=Path, default=Path("runs/testbed"), help="checkpoint/log folder")
    parser.add_argument("--out", type=Path, default=None, help="export the trained pipeline here when done")
    parser.add_argument("--clips", type=int, default=None, help="training clips to render (default 6000)")
    parser.add_argument("--form", choices=FORMS, default=None,
                        help="the tunes' form of a new run's data: walk (never repeats; v1/v2; the default) or aaba "
                             "(two-note motifs, A A B A); a run goes on with the form its data.npz holds")
    parser.add_argument("--minutes", type=float, default=85.0, help="stop after this much training time")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=None, help="clips per step (default 32)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 6e-4)")
    parser.add_argument("--decay-steps", type=int, default=None,
                        help="cosine learning-rate decay to lr/10 at this step (default: constant after warm-up)")
    parser.add_argument("--seed", type=int, default=None, help="seeds the data, the weights and the batches (default 0)")
    parser.add_argument("--checkpoint-every", type=float, default=5.0, help="minutes between checkpoints")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; use 1 when other jobs share the cores (2 threads then thrash)")
    parser.add_argument("--export-only", action="store_true", help="export the last checkpoint to --out and stop")
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--init-from", type=Path, help="start a new run from an exported pipeline (e.g. the shipped "
                                                       "weights) instead of random weights, at step 0")
    start.add_argument("--continue-from", type=Path, metavar="EXPORT",
                       help="start a new run from an export at the step its training.json records, with its "
                            "recipe (arch, tune form, clips, seed, batch, lr, decay steps) unless given here: go "
                            "on training where only the export survives")
    parser.add_argument("--matching-only", action="store_true",
                        help="with --init-from: copy only tensors whose names and shapes match (v1 weights into v2)")
    args = parser.parse_args(argv)
    if args.matching_only and args.init_from is None:
        parser.error("--matching-only goes with --init-from")
    source = fill_recipe(args)

    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    data_path = args.run / "data.npz"
    if data_path.exists():
        data = TestbedData.load(data_path)
        if args.form not in (None, data.form):
            raise SystemExit(f"{data_path} holds {data.form!r} tunes, not {args.form!r}; use a new --run folder")
    else:
        stats = None
        weights = args.init_from or args.continue_from
        if weights is not None:  # keep normalising as the weights learned to
            codec = ARCHITECTURES[args.arch][1].from_pretrained(weights).codec
            stats = (codec.mel_mean, codec.mel_std)
        form = args.form or source.get("form", "walk")
        data = render_dataset(args.clips, seed=args.seed, workers=args.threads, form=form, stats=stats)
        data.save(data_path)
    trainer = Trainer(args.run, data, caption_vocabulary(), args.lr, args.batch, args.seed, args.arch,
                      args.decay_steps)
    resumed = trainer.resume()
    if args.export_only:
        if args.out is None or not resumed:
            raise SystemExit("--export-only needs --out and a checkpoint in --run")
        trainer.export(args.out)
        print(f"exported step {trainer.step} to {args.out}")
        return
    if resumed:
        print(f"resumed at step {trainer.step}")
    elif args.continue_from is not None:
        print(f"continuing {args.continue_from} from step {trainer.continue_from(args.continue_from)}")
    elif args.init_from is not None:
        skipped = trainer.init_from(args.init_from, args.matching_only)
        print(f"starting from the weights in {args.init_from}" + (f"; initialised afresh: {', '.join(skipped)}"
                                                                   if skipped else ""))
    log_path = args.run / "loss.csv"
    new_log = not log_path.exists()
    started = last_checkpoint = time.monotonic()
    with log_path.open("a", newline="") as log, tqdm(initial=trainer.step, total=args.max_steps, desc="training") as bar:
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", "loss", "wall_s"])
        while trainer.step < args.max_steps and time.monotonic() - started < args.minutes * 60:
            loss = trainer.train_step()
            writer.writerow([trainer.step, f"{loss:.5f}", f"{time.monotonic() - started:.1f}"])
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if time.monotonic() - last_checkpoint > args.checkpoint_every * 60:
                trainer.checkpoint()
                log.flush()
                last_checkpoint = time.monotonic()
    trainer.checkpoint()
    if args.out is not None:
        trainer.export(args.out)
        print(f"exported the testbed pipeline to {args.out}")


if __name__ == "__main__":
    main()
