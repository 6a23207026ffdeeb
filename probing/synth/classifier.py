"""An attribute classifier for synthetic clips that needs no diffusion model.

Hand-made librosa features (timbre, key-invariant harmony, rhythm, dynamics) feed one
standardised multinomial logistic regression per attribute. Weights are plain arrays
(`.npz`) plus JSON: no pickle. `python -m probing.synth.classifier --fit --out DIR` refits.

Examples:
    >>> from probing.synth import render_clip
    >>> classifier = default_classifier()
    >>> classifier.predict(render_clip("violin", "waltz", "sad", score_seed=10**6), 16000, "instrument")
    'violin'
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import librosa
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import ThreadpoolController

from probing.paths import package_root
from probing.synth.classes import ATTRIBUTES, class_lists
from probing.synth.render import render_clip
from probing.synth.score import SAMPLE_RATE

FEATURE_VERSION = 1
_HOP = 512
_N_FFT = 2048
_N_MFCC = 20
_RHYTHM_LAGS = 48  # onset autocorrelation up to 48 hops (1.5 s)
_BEAT_FRACTIONS = (0.25, 1 / 3, 0.5, 2 / 3, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
_DIATONIC = (0, 2, 4, 5, 7, 9, 11)
_FREQUENCIES = np.fft.rfftfreq(_N_FFT, 1 / SAMPLE_RATE)
_BASS_BINS = 43  # STFT bins below ~330 Hz
_PEAK_BINS = 257  # STFT bins below ~2 kHz
_WEIGHTS_FILE = "weights.npz"
_META_FILE = "classifier.json"


def default_weights_dir() -> Path:
    """Where the shipped, fitted weights live."""
    return package_root() / "synth" / "classifier_weights"


def features(wave: np.ndarray, sr: int) -> np.ndarray:
    """One feature vector of a mono clip (resampled to 16 kHz first).

    Examples:
        >>> from probing.synth import render_clip
        >>> features(render_clip("flute", "march", "calm", 0), 16000).shape
        (207,)
    """
    with _single_threaded_blas():  # tiny matmuls: extra BLAS threads only fight for the cores
        return _features(np.asarray(wave, dtype=np.float32), sr)


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def _single_threaded_blas():
    return _blas_controller().limit(limits=1, user_api="blas")


def _features(y: np.ndarray, sr: int) -> np.ndarray:
    if sr != SAMPLE_RATE:
        y = librosa.resample(y, orig_sr=sr, target_sr=SAMPLE_RATE)
    peak = max(float(np.abs(y).max()), 1e-6)
    level = np.log([peak, float(np.sqrt(np.mean(y**2))) + 1e-6])  # dynamics live in the level
    y = y / peak
    # float64: squared float32 magnitudes of quiet bins turn denormal and make matmuls crawl
    magnitude = np.abs(librosa.stft(y, n_fft=_N_FFT, hop_length=_HOP)).astype(np.float64)
    power = magnitude**2
    mel_basis, chroma_basis = _filterbanks()
    mel = librosa.power_to_db(mel_basis @ power)
    mfcc = librosa.feature.mfcc(S=mel, n_mfcc=_N_MFCC)
    contrast = librosa.feature.spectral_contrast(S=magnitude, sr=SAMPLE_RATE, fmin=100, n_bands=5)
    rms = librosa.feature.rms(S=magnitude, frame_length=_N_FFT)[0]
    onset = librosa.onset.onset_strength(S=mel, sr=SAMPLE_RATE)
    spectral = _spectral_shape(magnitude, y)
    bass = chroma_basis[:, :_BASS_BINS] @ power[:_BASS_BINS]
    return np.concatenate([
        mfcc.mean(axis=1), mfcc.std(axis=1), np.abs(np.diff(mfcc, axis=1)).mean(axis=1),
        spectral.mean(axis=1), spectral.std(axis=1), contrast.mean(axis=1),
        _harmony(chroma_basis @ power, bass), _rhythm(onset, y.size / SAMPLE_RATE),
        _dynamics(rms), level, _register(mel, magnitude),
    ]).astype(np.float32)


@lru_cache(maxsize=1)
def _filterbanks() -> tuple[np.ndarray, np.ndarray]:
    """Mel (64 bands) and chroma filterbanks for the 2048-point STFT at 16 kHz."""
    return (librosa.filters.mel(sr=SAMPLE_RATE, n_fft=_N_FFT, n_mels=64),
            librosa.filters.chroma(sr=SAMPLE_RATE, n_fft=_N_FFT, tuning=0.0))


def _spectral_shape(magnitude: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per frame: log centroid, log bandwidth, log flatness, log 85 % roll-off, zero-crossing rate."""
    weights = magnitude / np.maximum(magnitude.sum(axis=0), 1e-9)
    centroid = (_FREQUENCIES[:, None] * weights).sum(axis=0)
    bandwidth = np.sqrt((((_FREQUENCIES[:, None] - centroid) ** 2) * weights).sum(axis=0))
    rolloff = _FREQUENCIES[np.argmax(np.cumsum(weights, axis=0) >= 0.85, axis=0)]
    flatness = librosa.feature.spectral_flatness(S=magnitude)[0]
    crossings = librosa.feature.zero_crossing_rate(y, frame_length=_N_FFT, hop_length=_HOP)[0]
    return np.stack([np.log(centroid + 1), np.log(bandwidth + 1), np.log(flatness + 1e-6),
                     np.log(rolloff + 1), crossings[: magnitude.shape[1]]])


def _harmony(chroma: np.ndarray, bass: np.ndarray) -> np.ndarray:
    """Key-invariant harmony: chroma |DFT|, chroma rotated to its best diatonic key, polyphony.

    The rotation puts the relative-major tonic at 0, so where the weight of the whole clip,
    its bass and its opening sits tells the modes (same notes, other tonic) apart.
    """
    mean = _unit_sum(chroma.mean(axis=1))
    key = int(np.argmax([mean[(shift + np.array(_DIATONIC)) % 12].sum() for shift in range(12)]))
    frames = chroma / np.maximum(chroma.sum(axis=0), 1e-9)
    entropy = -(frames * np.log(frames + 1e-9)).sum(axis=0)
    opening = chroma[:, : max(1, chroma.shape[1] // 4)].mean(axis=1)
    return np.concatenate([np.abs(np.fft.rfft(mean))[1:], np.roll(mean, -key),
                           np.roll(_unit_sum(bass.mean(axis=1)), -key), np.roll(_unit_sum(opening), -key),
                           [entropy.mean(), entropy.std()]])


def _unit_sum(values: np.ndarray) -> np.ndarray:
    return values / max(float(values.sum()), 1e-9)


def _rhythm(onset: np.ndarray, seconds: float) -> np.ndarray:
    """Onset density, tempo, and the onset autocorrelation at fixed lags and at beat fractions."""
    centred = onset - onset.mean()
    autocorrelation = np.correlate(centred, centred, mode="full")[centred.size - 1:]
    autocorrelation = autocorrelation / max(autocorrelation[0], 1e-9)
    peaks = librosa.onset.onset_detect(onset_envelope=onset, sr=SAMPLE_RATE, hop_length=_HOP)
    tempo = float(librosa.feature.tempo(onset_envelope=onset, sr=SAMPLE_RATE, hop_length=_HOP)[0])
    beat_lags = np.array(_BEAT_FRACTIONS) * (60.0 / tempo) * SAMPLE_RATE / _HOP
    at_beats = np.interp(beat_lags, np.arange(autocorrelation.size), autocorrelation)
    return np.concatenate([[onset.mean(), onset.std(), len(peaks) / seconds, np.log(tempo)],
                           autocorrelation[1: _RHYTHM_LAGS + 1], at_beats])


def _dynamics(rms: np.ndarray) -> np.ndarray:
    """Loudness shape: mean, spread, how often the clip is near-silent, how fast it changes."""
    loudest = max(float(rms.max()), 1e-9)
    return np.array([rms.mean() / loudest, rms.std() / loudest, np.mean(rms < 0.1 * loudest),
                     np.mean(np.abs(np.diff(rms))) / loudest])


def _register(mel: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Where the notes sit: 16-band log-mel profile and percentiles of the strongest low peak."""
    profile = mel.mean(axis=1).reshape(16, -1).mean(axis=1)
    strongest = _FREQUENCIES[1:_PEAK_BINS][np.argmax(magnitude[1:_PEAK_BINS], axis=0)]
    loud = magnitude.sum(axis=0) > 0.1 * magnitude.sum(axis=0).max()
    return np.concatenate([profile - profile.max(), np.percentile(np.log(strongest[loud]), (10, 50, 90))])


@dataclass
class _Head:
    """One attribute's standardiser and multinomial logistic regression, as plain arrays."""

    classes: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, feature_vector: np.ndarray) -> np.ndarray:
        logits = self.coef @ ((feature_vector - self.mean) / self.scale) + self.intercept
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()


class AttributeClassifier:
    """Predicts instrument, style and mood of a clip from librosa features.

    Examples:
        >>> classifier = AttributeClassifier.fit_synthetic(("instrument",), clips_per_class=2)
        >>> sorted(classifier.attributes)
        ['instrument']
    """

    def __init__(self, heads: dict[str, _Head]):
        self.heads = heads

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attributes this classifier was fitted for."""
        return tuple(self.heads)

    features = staticmethod(features)

    @classmethod
    def fit_synthetic(cls, attributes: tuple[str, ...] = ATTRIBUTES, clips_per_class: int = 40,
                      seed: int = 0) -> "AttributeClassifier":
        """Render balanced random clips (fresh score seeds) and fit one head per attribute.

        Every class of every attribute gets at least `clips_per_class` clips; the other
        attributes are drawn at random.
        """
        labels, vectors = synthetic_dataset(clips_per_class, seed)
        return cls.fit(vectors, {a: labels[a] for a in attributes})

    @classmethod
    def fit(cls, vectors: np.ndarray, labels: dict[str, list[str]]) -> "AttributeClassifier":
        """Fit heads on feature vectors (rows of `vectors`) and per-attribute label lists."""
        heads = {}
        for attribute, names in labels.items():
            scaler = StandardScaler().fit(vectors)
            model = LogisticRegression(C=0.2, max_iter=3000).fit(scaler.transform(vectors), names)
            order = [list(model.classes_).index(name) for name in class_lists()[attribute]
                     if name in model.classes_]
            heads[attribute] = _Head([str(model.classes_[i]) for i in order], scaler.mean_, scaler.scale_,
                                     model.coef_[order], model.intercept_[order])
        return cls(heads)

    def predict_proba(self, wave: np.ndarray, sr: int, attribute: str) -> dict[str, float]:
        """Class name -> probability for one clip."""
        head = self._head(attribute)
        return dict(zip(head.classes, map(float, head.probabilities(features(wave, sr)))))

    def predict(self, wave: np.ndarray, sr: int, attribute: str) -> str:
        """The most probable class of `attribute` for one clip."""
        probabilities = self.predict_proba(wave, sr, attribute)
        return max(probabilities, key=probabilities.__getitem__)

    def save(self, directory: Path) -> None:
        """Write `weights.npz` (arrays) and `classifier.json` (classes, feature settings)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"{a}.{field}": getattr(h, field) for a, h in self.heads.items()
                  for field in ("mean", "scale", "coef", "intercept")}
        np.savez(directory / _WEIGHTS_FILE, **arrays)
        meta = {"feature_version": FEATURE_VERSION, "sample_rate": SAMPLE_RATE, "hop_length": _HOP,
                "n_mfcc": _N_MFCC, "rhythm_lags": _RHYTHM_LAGS,
                "classes": {a: h.classes for a, h in self.heads.items()}}
        (directory / _META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "AttributeClassifier":
        """Read what `save` wrote; refuses weights made for other features."""
        directory = Path(directory)
        meta = json.loads((directory / _META_FILE).read_text(encoding="utf-8"))
        if meta["feature_version"] != FEATURE_VERSION:
            raise ValueError(f"classifier in {directory} has feature version {meta['feature_version']}, "
                             f"this code needs {FEATURE_VERSION}: refit with "
                             "python -m probing.synth.classifier --fit --out DIR")
        with np.load(directory / _WEIGHTS_FILE, allow_pickle=False) as arrays:
            heads = {a: _Head(classes, *(arrays[f"{a}.{field}"] for field in ("mean", "scale", "coef", "intercept")))
                     for a, classes in meta["classes"].items()}
        return cls(heads)

    def _head(self, attribute: str) -> _Head:
        if attribute not in self.heads:
            raise ValueError(f"classifier has no {attribute!r} head; choose one of: {', '.join(self.heads)}")
        return self.heads[attribute]


def synthetic_dataset(clips_per_class: int, seed: int) -> tuple[dict[str, list[str]], np.ndarray]:
    """Balanced random clips: labels per attribute and one feature row per clip.

    Score seeds are drawn from `seed`, so different `seed`s give held-out tunes.
    """
    rng = np.random.default_rng(seed)
    names = class_lists()
    count = clips_per_class * max(len(v) for v in names.values())
    labels = {a: [names[a][i] for i in rng.permutation(np.arange(count) % len(names[a]))] for a in ATTRIBUTES}
    score_seeds = rng.integers(0, 2**31, size=count)
    vectors = np.stack([
        features(render_clip(labels["instrument"][i], labels["style"][i], labels["mood"][i], int(s)), SAMPLE_RATE)
        for i, s in enumerate(score_seeds)])
    return labels, vectors


def default_classifier() -> AttributeClassifier:
    """The shipped classifier (fitted on synthetic clips; see `main`)."""
    return AttributeClassifier.load(default_weights_dir())


def accuracy(classifier: AttributeClassifier, labels: dict[str, list[str]], vectors: np.ndarray) -> dict[str, float]:
    """Fraction of rows whose most probable class matches the label, per attribute."""
    scores = {}
    for attribute in classifier.attributes:
        head = classifier.heads[attribute]
        predicted = [head.classes[int(np.argmax(head.probabilities(v)))] for v in vectors]
        scores[attribute] = float(np.mean([p == t for p, t in zip(predicted, labels[attribute])]))
    return scores


def main(argv: list[str] | None = None) -> None:
    """Fit on synthetic clips, report held-out accuracy, save: `--fit --out DIR`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="fit a classifier on freshly rendered clips")
    parser.add_argument("--out", type=Path, default=default_weights_dir(), help="where to write the weights")
    parser.add_argument("--clips-per-class", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.fit:
        parser.error("nothing to do: pass --fit")
    classifier = AttributeClassifier.fit_synthetic(clips_per_class=args.clips_per_class, seed=args.seed)
    held_out = synthetic_dataset(max(5, args.clips_per_class // 4), seed=args.seed + 1_000_003)
    for attribute, value in accuracy(classifier, *held_out).items():
        print(f"held-out {attribute} accuracy: {value:.3f}")
    classifier.save(args.out)
    print(f"saved to {args.out}")


if __name__ == "__main__":
    main()
