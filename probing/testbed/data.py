"""The testbed's training set: random synthetic renders as normalised log-mels, with their class labels.

The log-mels are stored unfolded, so one rendered set trains any codec fold (v1 4 x 4, v2 2 x 4).

Examples:
    >>> data = render_dataset(n_clips=8, seed=0)
    >>> data.mels.shape, data.latents(MelCodec(time_factor=2), [0, 1]).shape
    ((8, 256, 64), torch.Size([2, 8, 128, 16]))
"""
from __future__ import annotations

from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from tokenizers import pre_tokenizers
from tqdm import tqdm

from probing.synth import caption, class_lists, render_clip, templates
from probing.testbed.codec import MelCodec

ATTRIBUTES = ("instrument", "style", "mood")


@dataclass
class TestbedData:
    """Log-mels (float16, normalised with `mel_mean`/`mel_std`) and label indices per clip."""

    __test__ = False  # not a pytest test class, despite the name

    mels: np.ndarray  # (N, frames, n_mels)
    labels: np.ndarray  # (N, 3) indices into class_lists() for ATTRIBUTES
    score_seeds: np.ndarray  # (N,)
    mel_mean: float
    mel_std: float
    form: str = "walk"  # the tunes' form (probing.synth.score.FORMS)

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, mels=self.mels, labels=self.labels, score_seeds=self.score_seeds,
                 mel_stats=np.array([self.mel_mean, self.mel_std]), form=np.array(self.form))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "TestbedData":
        with np.load(path, allow_pickle=False) as f:
            mean, std = f["mel_stats"]
            if "mels" not in f:
                raise SystemExit(f"{path} is a training set of the v1 trainer (folded latents); render a new one "
                                 "(delete it, or use a new --run folder)")
            return cls(f["mels"], f["labels"], f["score_seeds"], float(mean), float(std), stored_form(path))

    def latents(self, codec: MelCodec, index: np.ndarray | list[int]) -> torch.Tensor:
        """The clips at `index` as float32 latents in `codec`'s fold."""
        return codec.to_latent(torch.from_numpy(self.mels[index].astype(np.float32)))


def stored_form(path: Path) -> str:
    """The tune form of a saved training set, without reading its log-mels ("walk" for sets before forms)."""
    with np.load(path, allow_pickle=False) as f:
        return str(f["form"]) if "form" in f else "walk"


def caption_vocabulary(draws: int = 3, seed: int = 0) -> list[str]:
    """Every word any caption template can produce (names and paraphrases)."""
    rng = np.random.default_rng(seed)
    classes = class_lists()
    split = pre_tokenizers.Whitespace().pre_tokenize_str  # the tokenizer's own word split
    words: set[str] = set()
    for template_id in templates():
        for instrument in classes["instrument"]:
            for style in classes["style"]:
                for mood in classes["mood"]:
                    texts = [caption(instrument, style, mood, template_id)]
                    texts += [caption(instrument, style, mood, template_id, alias_rng=rng) for _ in range(draws)]
                    words.update(word.lower() for text in texts for word, _ in split(text))
    return sorted(words)


def _render_log_mel(job: tuple[str, str, str, int, str]) -> np.ndarray:
    instrument, style, mood, score_seed, form = job
    wave = render_clip(instrument, style, mood, score_seed, form=form)
    return MelCodec().log_mel(torch.from_numpy(wave).unsqueeze(0))[0].numpy()


def render_dataset(n_clips: int, seed: int = 0, workers: int = 1, form: str = "walk",
                   stats: tuple[float, float] | None = None) -> TestbedData:
    """Render `n_clips` random (instrument, style, mood, score seed) clips of tunes in `form` and encode them.

    The log-mels are normalised with their own mean and std, or with `stats` (mean, std), e.g. those
    of a model being trained on (its codec must keep normalising as it learned to).
    """
    rng = np.random.default_rng(seed)
    classes = class_lists()
    labels = np.stack([rng.integers(0, len(classes[a]), n_clips) for a in ATTRIBUTES], axis=1)
    score_seeds = rng.integers(0, 2**31 - 1, n_clips)
    jobs = [(classes["instrument"][i], classes["style"][s], classes["mood"][m], int(k), form)
            for (i, s, m), k in zip(labels, score_seeds)]
    with Pool(workers) as pool:
        log_mels = np.stack(list(tqdm(pool.imap(_render_log_mel, jobs, chunksize=16), total=n_clips,
                                      desc="rendering clips")))
    mean, std = stats if stats is not None else (float(log_mels.mean()), float(log_mels.std()))
    return TestbedData(((log_mels - mean) / std).astype(np.float16), labels, score_seeds, mean, std, form)
