"""Spectrogram comparisons: the picture that shows whether an edit kept the structure.

Examples:
    >>> plot_spectrograms({"source": src, "edited": out}, 16000, "cmp.png")
"""
from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np

from probing.plots import pyplot, write_figure


def plot_spectrograms(clips: dict[str, np.ndarray], sr: int, path: str | Path, title: str = "") -> Path:
    """Log-mel spectrograms of `clips` side by side on one colour scale; written atomically as PNG."""
    plt = pyplot()
    mels = {name: librosa.power_to_db(librosa.feature.melspectrogram(y=np.asarray(w, np.float32), sr=sr,
                                                                      n_fft=1024, hop_length=256, n_mels=64), ref=1.0)
            for name, w in clips.items()}
    low, high = max(min(m.min() for m in mels.values()), -80.0), max(m.max() for m in mels.values())
    fig, axes = plt.subplots(1, len(mels), figsize=(4 * len(mels), 3.4), sharey=True, squeeze=False,
                             layout="constrained")  # room for the figure title above the panel titles
    for ax, (name, mel) in zip(axes[0], mels.items()):
        image = ax.imshow(mel, origin="lower", aspect="auto", vmin=low, vmax=high, cmap="magma",
                          extent=[0, mel.shape[1] * 256 / sr, 0, mel.shape[0]])
        ax.set_title(name)
        ax.set_xlabel("time (s)")
    axes[0][0].set_ylabel("mel band")
    fig.colorbar(image, ax=axes[0].tolist(), label="dB", fraction=0.02)
    if title:
        fig.suptitle(title)
    return write_figure(fig, path, dpi=100)
