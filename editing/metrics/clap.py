"""CLAP text adherence: cosine similarity of CLAP audio and text embeddings.

Reference: LAION-CLAP (Wu et al., "Large-scale contrastive language-audio pretraining", ICASSP
2023) through transformers' `ClapModel` + `ClapProcessor`; the "CLAP" column of the Melodia paper.

Examples:
    >>> clap = load_clap("laion/larger_clap_music")  # doctest: +SKIP
    >>> clap.score([edited], 16000, ["a waltz played on the violin"])  # doctest: +SKIP
    array([0.31])

(`load_clap` takes a hub id or a local save_pretrained folder; `score` gives one cosine per pair.)
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from editing.metrics._common import MissingWeightsError, at_rate
from probing.errors import MelodiaError
from probing.hub import hub_offline

DEFAULT_CLAP = "laion/larger_clap_music"


class ClapEmbedder:
    """A CLAP model and its processor: unit-length audio and text embeddings, and their cosine.

    Audio is resampled to the feature extractor's rate (48 kHz for the LAION checkpoints). Clips
    longer than its window (10 s) are scored on their first window, and the fusion flag is set
    from the clip itself: the reference processor crops long clips at random and, in fusion mode,
    marks a random clip of a batch as long, so its scores would change between runs and with the
    batch. Scores here are deterministic, and a batch gives what one-by-one calls give.
    """

    def __init__(self, model, processor, name: str):
        self.model = model.eval()
        self.processor = processor
        self.name = name

    @property
    def sample_rate(self) -> int:
        """The rate the feature extractor expects (48 kHz for LAION CLAP)."""
        return int(self.processor.feature_extractor.sampling_rate)

    def audio_embeddings(self, waves: Sequence[np.ndarray], sr: int) -> np.ndarray:
        """Unit-length CLAP audio embeddings, shape (clips, dim), float64."""
        window = int(self.processor.feature_extractor.nb_max_samples)
        clips = [at_rate(w, sr, self.sample_rate)[:window] for w in waves]
        inputs = self.processor(audio=clips, sampling_rate=self.sample_rate, return_tensors="pt")
        inputs["is_longer"] = torch.zeros_like(inputs["is_longer"])  # each clip is at most one window
        with torch.no_grad():
            features = self.model.get_audio_features(**inputs.to(self.model.device)).pooler_output
        return _unit(features.double().cpu().numpy())

    def text_embeddings(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length CLAP text embeddings, shape (texts, dim), float64."""
        if any(not t.strip() for t in texts):
            raise MelodiaError("CLAP needs a non-empty prompt")
        inputs = self.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            features = self.model.get_text_features(**inputs.to(self.model.device)).pooler_output
        return _unit(features.double().cpu().numpy())

    def score(self, waves: Sequence[np.ndarray], sr: int, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity of each clip with its text, in [-1, 1] (higher: the audio fits the text)."""
        if len(waves) != len(texts):
            raise MelodiaError(f"CLAP score pairs clips with texts: got {len(waves)} clips and {len(texts)} texts")
        return cosine_similarity(self.audio_embeddings(waves, sr), self.text_embeddings(texts))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (n, dim) arrays."""
    return (_unit(a) * _unit(b)).sum(axis=-1)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@lru_cache(maxsize=2)
def load_clap(checkpoint: str | Path = DEFAULT_CLAP, device: str = "cpu") -> ClapEmbedder:
    """Open a CLAP checkpoint: a Hugging Face id in the local cache, or a save_pretrained folder.

    Cached per (checkpoint, device). With HF_HUB_OFFLINE set or the hub unreachable, only local files are
    tried (no network retries).

    Raises:
        MissingWeightsError: the checkpoint is not here; the message says how to pass a local folder.
    """
    local_only = Path(checkpoint).is_dir() or hub_offline()  # before transformers reads HF_HUB_OFFLINE
    from transformers import ClapModel, ClapProcessor
    from transformers.utils import logging

    logging.disable_progress_bar()
    try:
        model = ClapModel.from_pretrained(str(checkpoint), local_files_only=local_only)
        processor = ClapProcessor.from_pretrained(str(checkpoint), local_files_only=local_only)
    except (OSError, ValueError) as error:
        if Path(checkpoint).is_dir():
            raise MelodiaError(f"{checkpoint} is not a CLAP checkpoint folder ({type(error).__name__}): expected "
                               "config.json, model weights and processor files from save_pretrained") from None
        raise MissingWeightsError(
            f"cannot load CLAP checkpoint '{checkpoint}': it is not in the local Hugging Face cache and the hub is "
            f"unreachable. Download it where you have a network (huggingface-cli download {checkpoint} "
            "--local-dir DIR) and pass the folder (--clap DIR, or checkpoint=DIR)") from None
    return ClapEmbedder(model.to(device), processor, str(checkpoint))


def clap_score(wave: np.ndarray, sr: int, prompt: str, checkpoint: str | Path = DEFAULT_CLAP) -> float:
    """CLAP text adherence of one clip: cosine of its audio embedding with `prompt`'s text embedding.

    Args:
        wave: mono waveform at `sr` (resampled to the checkpoint's 48 kHz).
        prompt: the target text, e.g. "a waltz played on the violin".
        checkpoint: Hugging Face id (local cache) or folder; default `laion/larger_clap_music`.

    Returns:
        In [-1, 1]; higher means the audio fits the text better.
    """
    return float(load_clap(checkpoint).score([wave], sr, [prompt])[0])
