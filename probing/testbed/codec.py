"""Waveform <-> normalised log-mel <-> latent, the testbed's invertible audio codec.

The latent is the normalised log-mel spectrogram folded like pixel-unshuffle (no learned VAE):
(B, frames, mels) -> (B, time_factor * latent_factor, frames / time_factor, mels / latent_factor).
Decoding unfolds it and inverts the mel with Griffin-Lim, so every latent has an exact, listenable
waveform. The v1 testbeds fold 4 x 4 (64 ms per latent frame); the v2 UNet testbed folds time by 2
only (32 ms per frame), so its attention sees time as finely as AudioLDM 2's (docs/testbed.md).

Examples:
    >>> codec = MelCodec(time_factor=2)
    >>> z = codec.encode(torch.zeros(1, codec.clip_samples) + 0.01)
    >>> tuple(z.shape)
    (1, 8, 128, 16)
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import librosa
import numpy as np
import torch
import torch.nn.functional as F


LOG_MEL_FLOOR, LOG_MEL_CEILING = float(np.log(1e-5)), 6.0


@dataclass(frozen=True)
class MelCodec:
    """Fixed STFT/mel settings plus the dataset's log-mel mean/std (set when training starts)."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    n_mels: int = 64
    frames: int = 256
    latent_factor: int = 4  # mel bands folded into channels (and frames, unless time_factor is set)
    time_factor: int | None = None  # frames folded into channels; None: latent_factor (a square fold)
    mel_mean: float = -4.0
    mel_std: float = 2.5
    griffin_lim_iters: int = 32

    @property
    def clip_samples(self) -> int:
        return self.frames * self.hop_length

    @property
    def fold(self) -> tuple[int, int]:
        """(time, mel) fold factors of the latent."""
        return (self.time_factor or self.latent_factor, self.latent_factor)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        ft, fm = self.fold
        return (ft * fm, self.frames // ft, self.n_mels // fm)

    @property
    def frame_ms(self) -> float:
        """Milliseconds of audio per latent time step."""
        return 1000.0 * self.hop_length * self.fold[0] / self.sample_rate

    def to_latent(self, normalised: torch.Tensor) -> torch.Tensor:
        """(B, frames, n_mels) normalised log-mel -> (B, C, H, W) latent (pixel-unshuffle's channel order)."""
        (ft, fm), (c, h, w) = self.fold, self.latent_shape
        return normalised.reshape(-1, h, ft, w, fm).permute(0, 2, 4, 1, 3).reshape(-1, c, h, w)

    def from_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latent -> (B, frames, n_mels) normalised log-mel; the inverse of `to_latent`."""
        (ft, fm), (_, h, w) = self.fold, self.latent_shape
        return latents.reshape(-1, ft, fm, h, w).permute(0, 3, 1, 4, 2).reshape(-1, h * ft, w * fm)

    def to_config(self) -> dict:
        return asdict(self)

    def _mel_basis(self, device: torch.device) -> torch.Tensor:
        return _mel_basis(self.sample_rate, self.n_fft, self.n_mels).to(device)

    def _stft(self, wave: torch.Tensor) -> torch.Tensor:
        window = torch.hann_window(self.n_fft, device=wave.device)
        spec = torch.stft(wave, self.n_fft, self.hop_length, window=window, center=True, return_complex=True)
        return spec[..., : self.frames]

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, clip_samples) waveform -> (B, frames, n_mels) natural-log magnitude mel."""
        magnitude = self._stft(wave.float()).abs()  # (B, freq, frames)
        mel = torch.einsum("mf,bft->btm", self._mel_basis(wave.device), magnitude)
        return torch.log(mel.clamp_min(1e-5))

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, clip_samples) waveform -> (B, C, H, W) latent."""
        return self.to_latent((self.log_mel(wave) - self.mel_mean) / self.mel_std)

    def latent_to_log_mel(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latent -> (B, frames, n_mels) natural-log mel."""
        return self.from_latent(latents.float()) * self.mel_std + self.mel_mean

    def decode(self, latents: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """(B, C, H, W) latent -> (B, clip_samples) waveform by Griffin-Lim (fast variant, momentum 0.99)."""
        # clamp to the range a log-mel can hold (floor 1e-5, a loud peak): an off-manifold latent
        # (an untrained model, a large guidance) must not overflow exp() into inf/NaN audio
        log_mel = self.latent_to_log_mel(latents).clamp(LOG_MEL_FLOOR, LOG_MEL_CEILING)
        mel = torch.exp(log_mel).transpose(1, 2)  # (B, n_mels, frames)
        inverse_basis = _inverse_mel_basis(self.sample_rate, self.n_fft, self.n_mels).to(mel.device)
        magnitude = (inverse_basis @ mel).clamp_min(0.0)
        magnitude = F.pad(magnitude, (0, 1), mode="replicate")  # the frame dropped by _stft
        window = torch.hann_window(self.n_fft, device=mel.device)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        phase = torch.exp(2j * np.pi * torch.rand(magnitude.shape, generator=generator)).to(mel.device)
        previous = torch.zeros_like(phase)
        for _ in range(self.griffin_lim_iters):
            wave = torch.istft(magnitude * phase, self.n_fft, self.hop_length, window=window,
                               length=self.clip_samples)
            rebuilt = torch.stft(wave, self.n_fft, self.hop_length, window=window, return_complex=True)
            accelerated = rebuilt - 0.99 * previous
            previous = rebuilt
            phase = accelerated / accelerated.abs().clamp_min(1e-8)
        return torch.istft(magnitude * phase, self.n_fft, self.hop_length, window=window, length=self.clip_samples)


@functools.lru_cache(maxsize=4)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    basis = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=sample_rate / 2,
                                htk=False, norm="slaney")
    return torch.from_numpy(basis).float()


@functools.lru_cache(maxsize=4)
def _inverse_mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    return torch.linalg.pinv(_mel_basis(sample_rate, n_fft, n_mels))
