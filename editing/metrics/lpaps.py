"""LPAPS: learned perceptual audio patch similarity, an LPIPS distance between mel spectrograms.

Reference: Iashin & Rahtu, "Taming Visually Guided Sound Generation" (BMVC 2021; SpecVQGAN,
specvqgan/modules/losses/lpaps.py): LPIPS (Zhang et al. 2018) with VGG16's convolutional layout run
on one-channel mel spectrograms ("VGGishish", trained on VGGSound). Structure preservation in the
Melodia paper (lower is better). The network is built here; its trained weights are not shipped.

Examples:
    >>> net = load_lpaps("lpaps.pth")                     # SpecVQGAN's LPAPS state dict (.pt/.pth/.safetensors)
    >>> lpaps_distance(source, edited, 16000, net)        # 0 = the same features; lower = structure kept
"""
from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from editing.metrics._common import MetricUnavailableError, MissingWeightsError, at_rate
from probing.errors import MelodiaError

# SpecVQGAN's spectrogram (feature_extraction/extract_mel_spectrogram.py): magnitude STFT, mel,
# 20 log10 - 20 dB, (dB + 100) / 100 clipped to [0, 1], then 2x - 1 as its models expect.
LPAPS_SAMPLE_RATE = 22_050
N_FFT, HOP_LENGTH, N_MELS, F_MIN, F_MAX = 1024, 256, 80, 125.0, 7600.0
REFERENCE_WIDTHS = (64, 128, 256, 512, 512)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
_MIN_FRAMES = 16  # four 2x2 max-poolings
NO_WEIGHTS = ("no LPAPS weights given: LPAPS needs the trained SpecVQGAN LPAPS network; pass its state dict "
              "(--lpaps FILE, or weights=FILE: .safetensors, or .pt/.pth read with weights_only)")


def lpaps_spectrogram(wave: np.ndarray, sr: int) -> np.ndarray:
    """SpecVQGAN's log-mel spectrogram of a clip, in [-1, 1], shape (80, frames).

    22.05 kHz, n_fft 1024, hop 256, 80 mel bands from 125 to 7600 Hz (librosa slaney filters),
    magnitude floored at 1e-5. Unlike the reference the clip is not padded or cut to 10 s.
    """
    import librosa

    magnitude = np.abs(librosa.stft(at_rate(wave, sr, LPAPS_SAMPLE_RATE), n_fft=N_FFT, hop_length=HOP_LENGTH))
    decibels = 20 * np.log10(np.maximum(_mel_filters() @ magnitude, 1e-5)) - 20
    return (2 * np.clip((decibels + 100) / 100, 0, 1) - 1).astype(np.float32)


@lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=LPAPS_SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=F_MIN, fmax=F_MAX)


class _Scaling(nn.Module):
    """Per-mel-bin standardisation with the training set's statistics (buffers from the weights file)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 1, N_MELS, 1))
        self.register_buffer("scale", torch.ones(1, 1, N_MELS, 1))

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return (spectrogram - self.shift) / self.scale


class _Features(nn.Module):
    """VGG16's 13 conv layers on a 1-channel input, cut after relu1_2, 2_2, 3_3, 4_3 and 5_3."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        index, channels = 0, 1
        for block, (width, convs) in enumerate(zip(widths, _CONVS_PER_BLOCK), start=1):
            layers = OrderedDict()
            if block > 1:
                layers[str(index)], index = nn.MaxPool2d(2, 2), index + 1
            for _ in range(convs):
                layers[str(index)] = nn.Conv2d(channels, width, kernel_size=3, padding=1)
                layers[str(index + 1)] = nn.ReLU()
                index, channels = index + 2, width
            # module names keep the reference's global layer indices: net.slice3.10.weight, ...
            setattr(self, f"slice{block}", nn.Sequential(layers))

    def forward(self, spectrogram: torch.Tensor) -> list[torch.Tensor]:
        outputs, h = [], spectrogram
        for block in range(1, len(_CONVS_PER_BLOCK) + 1):
            h = getattr(self, f"slice{block}")(h)
            outputs.append(h)
        return outputs


class _Linear(nn.Module):
    """A 1x1 conv to one channel: learned, non-negative weights of the channel differences."""

    def __init__(self, channels: int):
        super().__init__()
        # Dropout first, as in the reference, so its keys (lin0.model.1.weight) load unchanged; off in eval.
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LPAPSNet(nn.Module):
    """The LPAPS network with the reference's state-dict layout, so SpecVQGAN's weights load as they are.

    Keys: `scaling_layer.shift`/`.scale` (1, 1, 80, 1); `net.slice1`..`net.slice5` (conv weights and
    biases under the reference's layer indices); `lin0`..`lin4.model.1.weight` (1, width, 1, 1).
    Build it with `load_lpaps`: a fresh `LPAPSNet()` has random weights and gives meaningless numbers.

    Examples:
        >>> sorted(LPAPSNet().state_dict())[:2]
        ['lin0.model.1.weight', 'lin1.model.1.weight']
    """

    def __init__(self, widths: tuple[int, ...] = REFERENCE_WIDTHS):
        super().__init__()
        self.scaling_layer = _Scaling()
        self.net = _Features(widths)
        for k, width in enumerate(widths):
            setattr(self, f"lin{k}", _Linear(width))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances of spectrogram pairs, (batch, 1, 80, frames) each -> (batch,).

        Per layer: unit-normalise each position's channel vector, square the difference, weight
        the channels (1x1 conv), average over frequency and time; sum over the five layers.
        """
        features = self.net(self.scaling_layer(torch.cat([a, b])))
        distance = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        for k, feature in enumerate(features):
            fa, fb = _unit_channels(feature).chunk(2)
            distance = distance + getattr(self, f"lin{k}").model((fa - fb) ** 2).mean(dim=(1, 2, 3))
        return distance


def _unit_channels(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def load_lpaps(path: str | Path) -> LPAPSNet:
    """Read LPAPS weights from a local file: `.safetensors`, or `.pt`/`.pth` (torch.load, weights_only).

    Layer widths are read from the file (the reference's are 64, 128, 256, 512, 512).

    Raises:
        MissingWeightsError: no file at `path`.
        MelodiaError: the file is unreadable or not an LPAPS state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: no such LPAPS weights file")
    state = _read_state_dict(path)
    try:
        net = LPAPSNet(tuple(int(state[f"lin{k}.model.1.weight"].shape[1]) for k in range(len(_CONVS_PER_BLOCK))))
        net.load_state_dict(state)
    except (KeyError, RuntimeError, AttributeError):
        raise MelodiaError(f"{path}: not LPAPS weights (expected SpecVQGAN's LPAPS state dict: scaling_layer.*, "
                           "net.slice1-5.*, lin0-4.model.1.weight)") from None
    return net.eval().requires_grad_(False)


def _read_state_dict(path: Path) -> dict:
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pt", ".pth"):
        raise MelodiaError(f"{path}: LPAPS weights must be .safetensors, .pt or .pth")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # safetensors, zip and unpickling each raise their own types
        raise MelodiaError(f"{path}: cannot read LPAPS weights ({type(error).__name__}); .pt/.pth files must hold "
                           "a plain state dict (loaded with weights_only=True)") from None


def lpaps_distance(a: np.ndarray, b: np.ndarray, sr: int, weights: LPAPSNet | str | Path | None) -> float:
    """LPAPS distance between two clips (frames aligned by index, the shorter length).

    Args:
        a: a mono waveform at `sr` (resampled to 22.05 kHz).
        b: the other mono waveform at `sr`.
        sr: their sample rate.
        weights: a network from `load_lpaps`, or the path of its weights file.

    Returns:
        >= 0 with trained (non-negative) linear weights; 0 for identical clips; symmetric.

    Raises:
        MissingWeightsError: `weights` is None or names no file; never a number from random weights.
        MetricUnavailableError: a clip is shorter than 16 frames (0.19 s).
    """
    if weights is None:
        raise MissingWeightsError(NO_WEIGHTS)
    net = weights if isinstance(weights, LPAPSNet) else load_lpaps(weights)
    spectrograms = [lpaps_spectrogram(x, sr) for x in (a, b)]
    frames = min(s.shape[1] for s in spectrograms)
    if frames < _MIN_FRAMES:
        raise MetricUnavailableError(f"LPAPS needs at least {_MIN_FRAMES} spectrogram frames "
                           f"({_MIN_FRAMES * HOP_LENGTH / LPAPS_SAMPLE_RATE:.2f} s); got {frames}")
    sa, sb = (torch.from_numpy(s[None, None, :, :frames]) for s in spectrograms)
    parameter = next(net.parameters())
    with torch.no_grad():
        return float(net(sa.to(parameter), sb.to(parameter))[0])
