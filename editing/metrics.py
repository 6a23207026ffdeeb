"""Edit metrics that need no downloaded weights: chroma similarity and log-mel distance.

chroma_similarity: librosa STFT chroma (n_fft 2048, hop 512) of both clips, frames aligned by
index (the shorter length), cosine similarity per frame, mean over frames where either clip is
not silent. 1.0 = the same pitch classes at the same times (melody/harmony kept).
log_mel_distance: mean absolute difference of natural-log mel spectrograms (64 bands, n_fft 1024,
hop 256, floor 1e-5), frames aligned by index: 0 = the same spectrum.

Examples:
    >>> chroma_similarity(source, edited, 16000)      # structure kept?
    0.83
    >>> log_mel_distance(edited, ideal, 16000)         # how far from the ground-truth edit
"""
from __future__ import annotations

import librosa
import numpy as np

_SILENT_FRAME_ENERGY = 1e-6


def chroma_similarity(a: np.ndarray, b: np.ndarray, sr: int) -> float:
    """Mean per-frame cosine similarity of the chromagrams of `a` and `b` (non-silent frames)."""
    chroma = [librosa.feature.chroma_stft(y=np.asarray(x, np.float32), sr=sr, n_fft=2048, hop_length=512)
              for x in (a, b)]
    energy = [librosa.feature.rms(y=np.asarray(x, np.float32), frame_length=2048, hop_length=512)[0] ** 2
              for x in (a, b)]
    frames = min(c.shape[1] for c in chroma)
    ca, cb = chroma[0][:, :frames], chroma[1][:, :frames]
    voiced = (energy[0][:frames] > _SILENT_FRAME_ENERGY) | (energy[1][:frames] > _SILENT_FRAME_ENERGY)
    if not voiced.any():
        return float("nan")
    cosine = (ca * cb).sum(0) / (np.linalg.norm(ca, axis=0) * np.linalg.norm(cb, axis=0) + 1e-12)
    return float(cosine[voiced].mean())


def log_mel_distance(a: np.ndarray, b: np.ndarray, sr: int) -> float:
    """Mean |log mel(a) - log mel(b)| over aligned frames."""
    mels = [np.log(np.maximum(librosa.feature.melspectrogram(y=np.asarray(x, np.float32), sr=sr, n_fft=1024,
                                                            hop_length=256, n_mels=64, power=1.0), 1e-5))
            for x in (a, b)]
    frames = min(m.shape[1] for m in mels)
    return float(np.abs(mels[0][:, :frames] - mels[1][:, :frames]).mean())
