"""Probes: how well an attribute (instrument, style, mood) can be read from one layer's maps.

A probe standardises the flattened maps, projects them on their first principal components
(fitted on the training split only) and classifies them with a small MLP (`hidden > 0`) or a
linear softmax (`hidden = 0`, the baseline). Many probes train at once as one batched model, so a
whole profile (every layer x kind x attribute, its control task and the text baseline) costs a
few batched matrix products per fold.

Evaluation follows what a reviewer asks for: two split protocols, `template` (folds grouped by
prompt template: a template never sits on both sides; the honest default) and `random` (prompts
shuffled into folds, as most probing papers do: a probe may then recognise a template it has
seen), balanced accuracy of the out-of-fold predictions, a 95 % bootstrap interval (resampling
templates under `template`, prompts under `random`), the chance level, and a control task.

The control task (Hewitt & Liang 2019) gives each template a fixed random class: labels that
are a function of a nuisance, not of the attribute. It is cross-validated with random folds (a
template id can only be learned when it sits on both sides), so it rises above its chance
exactly when the features carry the template, and the real task must beat what that nuisance
alone explains. (A control of labels permuted between prompts is chance by construction.)

Examples:
    >>> probe = MLPProbe(hidden=32).fit(X_train, y_train)        # a scikit-learn estimator
    >>> probe.score(X_test, y_test)                               # balanced accuracy
    >>> scores = probe_features({"self:3/flat": X}, {"instrument": y}, groups=template_ids)
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GroupKFold, KFold

from probing.errors import MelodiaError
from probing.protocols import SPLITS

PROBE_FORMAT = "melodia.probe"


@dataclass(frozen=True)
class ProbeSettings:
    """Probe capacity, optimisation and evaluation (recorded in every profile).

    components: principal components kept per layer (fitted on the training folds only).
    hidden: MLP width; 0 = linear softmax. Full-batch AdamW for `epochs` steps.
    """

    hidden: int = 32
    components: int = 64
    epochs: int = 100
    lr: float = 3e-2
    weight_decay: float = 1e-2
    folds: int = 5
    bootstrap: int = 1000
    seed: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ProbeScore:
    """One probe's cross-validated result.

    target: what was probed: "self:3" / "cross:3" (a layer's maps) or "text" (the prompt embedding).
    features: the feature family ("flat", "word", "keys"; "embedding" for text), see probing.features.
    split: "template" (folds grouped by template) or "random".
    accuracy: balanced accuracy of the out-of-fold predictions; ci: its 95 % bootstrap interval.
    control: balanced accuracy of the same probe on the control task (a random class per template,
    random folds), whose chance level is `control_chance`.
    """

    attribute: str
    target: str
    probe: str
    accuracy: float
    ci: tuple[float, float]
    control: float
    chance: float
    n_prompts: int
    n_groups: int
    features: str = "flat"
    split: str = "template"
    control_chance: float | None = None  # None: a version-1 profile's control (labels permuted: chance)

    @property
    def selectivity(self) -> float:
        """Accuracy above chance minus the control's accuracy above its chance."""
        control_chance = self.chance if self.control_chance is None else self.control_chance
        return (self.accuracy - self.chance) - (self.control - control_chance)

    def to_json(self) -> dict:
        return {**asdict(self), "ci": list(self.ci)}

    @classmethod
    def from_json(cls, data: dict) -> ProbeScore:
        return cls(**{**data, "ci": tuple(data["ci"])})


# ---- projection and batched training ----------------------------------------------------------
@dataclass
class Projection:
    """Centre, project on the leading principal components, scale to unit variance: (n, F) -> (n, d)."""

    mean: torch.Tensor        # (F,)
    components: torch.Tensor  # (F, d)
    scale: torch.Tensor       # (d,)

    @classmethod
    def fit(cls, x: torch.Tensor, n_components: int, seed: int) -> Projection:
        mean = x.mean(0)
        centred = x - mean
        q = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.pca_lowrank(centred, q=q, center=False, niter=3)
        projected = centred @ v
        return cls(mean, v, projected.std(0).clamp_min(1e-6))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) @ self.components / self.scale


def _pad_columns(z: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(z, (0, width - z.shape[-1])) if z.shape[-1] < width else z


def _init_weights(n_probes: int, d: int, hidden: int, n_classes: int, generator: torch.Generator) -> list[torch.Tensor]:
    sizes = [d, hidden, n_classes] if hidden else [d, n_classes]
    weights = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / fan_in ** 0.5
        weights.append((torch.rand(n_probes, fan_in, fan_out, generator=generator) * 2 - 1) * bound)
        weights.append(torch.zeros(n_probes, 1, fan_out))
    return weights


def _logits(weights: list[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
    """(P, n, d) -> (P, n, C) through [W1, b1, (W2, b2)]: linear, or one ReLU hidden layer."""
    out = torch.baddbmm(weights[1], z, weights[0])
    if len(weights) == 4:
        out = torch.baddbmm(weights[3], torch.relu(out), weights[2])
    return out


def _sample_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per-probe weights that make every present class count equally and each probe's weights sum to 1."""
    counts = F.one_hot(y, n_classes).sum(1, keepdim=True).float()  # (P, 1, C)
    present = (counts > 0).sum(-1).clamp_min(1)                     # (P, 1)
    per_sample = counts.squeeze(1).gather(1, y)                     # (P, n)
    return 1.0 / (per_sample * present)


def train_batched(z: torch.Tensor, y: torch.Tensor, n_classes: int, hidden: int, settings: ProbeSettings,
                  generator: torch.Generator) -> list[torch.Tensor]:
    """Fit P independent probes at once: z (P, n, d) float, y (P, n) class indices -> weights.

    Full-batch AdamW on the class-balanced cross-entropy. The gradients are written out by hand
    (softmax - one-hot, back through the ReLU layer): the values autograd gives (tests/test_probes.py
    compares them), without its bookkeeping, which on these small batched matrices costs more than
    the arithmetic (`python benchmarks/probe_speed.py` times both).
    """
    weights = _init_weights(z.shape[0], z.shape[-1], hidden, n_classes, generator)
    optimiser = torch.optim.AdamW(weights, lr=settings.lr, weight_decay=settings.weight_decay)
    sample_weights = _sample_weights(y, n_classes).unsqueeze(-1)  # (P, n, 1)
    one_hot = F.one_hot(y, n_classes).to(z.dtype)
    for _ in range(settings.epochs):
        for weight, grad in zip(weights, _loss_gradients(weights, z, one_hot, sample_weights)):
            weight.grad = grad
        optimiser.step()
    return weights


def _loss_gradients(weights: list[torch.Tensor], z: torch.Tensor, one_hot: torch.Tensor,
                    sample_weights: torch.Tensor) -> list[torch.Tensor]:
    """d/dweights of sum(sample_weights * cross_entropy(_logits(weights, z), classes)), analytically."""
    hidden_in = torch.baddbmm(weights[1], z, weights[0])
    if len(weights) == 2:
        grad = (torch.softmax(hidden_in, -1) - one_hot).mul_(sample_weights)
        return [z.transpose(1, 2) @ grad, grad.sum(1, keepdim=True)]
    hidden_out = torch.relu(hidden_in)
    grad = (torch.softmax(torch.baddbmm(weights[3], hidden_out, weights[2]), -1) - one_hot).mul_(sample_weights)
    grad_out = [hidden_out.transpose(1, 2) @ grad, grad.sum(1, keepdim=True)]
    grad = (grad @ weights[2].transpose(1, 2)).mul_(hidden_in > 0)
    return [z.transpose(1, 2) @ grad, grad.sum(1, keepdim=True), *grad_out]


# ---- metrics ----------------------------------------------------------------------------------
def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in `y` (chance = 1 / number of classes)."""
    correct, total = _class_counts(y, predicted, n_classes)
    present = total > 0
    return float((correct[present] / total[present]).mean())


def _class_counts(y: np.ndarray, predicted: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    total = np.bincount(y, minlength=n_classes).astype(float)
    correct = np.bincount(y[predicted == y], minlength=n_classes).astype(float)
    return correct, total


def cluster_bootstrap_ci(y: np.ndarray, predicted: np.ndarray, groups: np.ndarray, n_classes: int,
                         n_resamples: int, rng: np.random.Generator, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the balanced accuracy when whole groups (templates) are resampled."""
    names, group_index = np.unique(groups, return_inverse=True)
    cell = group_index * n_classes + y  # (group, class) of every prompt: counts in one pass, any number of groups
    total = np.bincount(cell, minlength=len(names) * n_classes).reshape(len(names), n_classes).astype(float)
    correct = np.bincount(cell[predicted == y], minlength=len(names) * n_classes).reshape(total.shape).astype(float)
    multiplicity = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_resamples)  # (B, G)
    correct_b, total_b = multiplicity @ correct, multiplicity @ total
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(total_b > 0, correct_b / total_b, np.nan)
    scores = np.nanmean(recall, axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(scores, tail)), float(np.quantile(scores, 1 - tail))


def grouped_folds(groups: np.ndarray, n_folds: int) -> list[np.ndarray]:
    """Test indices of each fold; every group (template) lies in exactly one test fold."""
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise MelodiaError(f"grouped cross-validation needs prompts from >= 2 templates, got {n_groups}; "
                           "use a prompt set with several templates (template ids are kept in the store)")
    splitter = GroupKFold(n_splits=min(n_folds, n_groups))
    return [test for _, test in splitter.split(np.zeros(len(groups)), groups=groups)]


def split_folds(split: str, groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Test indices of each fold under protocol `split` ("template": grouped by template; "random")."""
    if split == "template":
        return grouped_folds(groups, n_folds)
    if split == "random":
        splitter = KFold(n_splits=min(n_folds, len(groups)), shuffle=True, random_state=seed)
        return [test for _, test in splitter.split(np.zeros(len(groups)))]
    raise MelodiaError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")


def control_labels(groups: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A fixed random class per template (balanced over min(templates, n_classes) classes)."""
    names = np.unique(groups)
    rng = np.random.default_rng(seed)
    classes = rng.permutation(np.resize(np.arange(min(len(names), n_classes)), len(names)))
    return classes[np.searchsorted(names, groups)]


def encode_labels(values: list[str]) -> tuple[np.ndarray, list[str]]:
    """String labels -> (class indices, sorted class names)."""
    classes = sorted(set(values))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[v] for v in values], dtype=np.int64), classes


# ---- cross-validated probing of many feature sets -------------------------------------------
PROBE_KINDS = {"mlp": None, "linear": 0}  # hidden width: None = the settings' MLP width
FeatureSet = np.ndarray | dict[str, np.ndarray]  # one matrix, or one per attribute (word-aligned features)


def _target_and_family(key: str) -> tuple[str, str]:
    target, _, family = key.partition("/")
    return target, family or ("embedding" if target == "text" else "flat")


def _out_of_fold(tensors: dict[str, dict[str, torch.Tensor]], targets: dict[str, np.ndarray],
                 n_classes: dict[str, int], folds: list[np.ndarray], probes: tuple[str, ...],
                 settings: ProbeSettings, generator: torch.Generator, progress=None) -> dict:
    """Out-of-fold predictions {(attribute, probe, key): (n,)} of one probe per feature set and attribute.

    `tensors[attribute][key]` is the feature matrix the attribute's probe on `key` reads."""
    n = len(next(iter(targets.values())))
    out = {(a, p, k): np.full(n, -1) for a in targets for p in probes for k in tensors[a]}
    for fold, test in enumerate(folds):
        train = np.setdiff1d(np.arange(n), test)
        projected: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # one projection per distinct matrix
        for attribute, y in targets.items():
            keys = list(tensors[attribute])
            for key in keys:
                x = tensors[attribute][key]
                if id(x) not in projected:
                    projection = Projection.fit(x[train], settings.components, settings.seed + fold)
                    projected[id(x)] = (projection(x[train]), projection(x[test]))
            pairs = [projected[id(tensors[attribute][k])] for k in keys]
            width = max(z.shape[1] for z, _ in pairs)
            z_train = torch.stack([_pad_columns(z, width) for z, _ in pairs])
            z_test = torch.stack([_pad_columns(z, width) for _, z in pairs])
            labels = torch.as_tensor(np.stack([y[train]] * len(keys)))
            for probe in probes:
                hidden = settings.hidden if PROBE_KINDS[probe] is None else PROBE_KINDS[probe]
                weights = train_batched(z_train, labels, n_classes[attribute], hidden, settings, generator)
                predicted = _logits(weights, z_test).argmax(-1).numpy()
                for i, key in enumerate(keys):
                    out[attribute, probe, key][test] = predicted[i]
        if progress is not None:
            progress(1)
    return out


def probe_features(features: dict[str, FeatureSet], labels: dict[str, list[str]], groups: np.ndarray,
                   settings: ProbeSettings = ProbeSettings(), probes: tuple[str, ...] = ("mlp", "linear"),
                   progress=None, splits: tuple[str, ...] = ("template",)) -> list[ProbeScore]:
    """Cross-validate one probe per (feature set, attribute, probe kind) under each split, plus its control.

    `features`: "target/family" (e.g. "cross:3/word", "self:3", "text") -> (n_prompts, n_features), or
    attribute -> matrix for features that differ per attribute (a set without an attribute's matrix
    is not probed for it); `labels`: attribute -> one label per prompt; `groups`: template id per
    prompt. `progress(n)` is called after each fold. Deterministic for a given `settings.seed`.
    """
    groups = np.asarray(groups)
    n = len(groups)
    bad = [k for k, v in features.items() for m in (v.values() if isinstance(v, dict) else [v]) if len(m) != n]
    if bad or any(len(v) != n for v in labels.values()):
        raise ValueError(f"every feature set and label list needs one row per prompt ({n}); {bad[:1]} has not")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise MelodiaError(f"unknown split {unknown[0]!r} (known: {', '.join(SPLITS)})")
    rng = np.random.default_rng(settings.seed)
    encoded = {a: encode_labels(v) for a, v in labels.items()}
    n_classes = {a: len(classes) for a, (_, classes) in encoded.items()}
    cache: dict[int, torch.Tensor] = {}

    def tensor(x: np.ndarray) -> torch.Tensor:
        if id(x) not in cache:
            cache[id(x)] = torch.as_tensor(np.asarray(x, np.float32))
        return cache[id(x)]

    tensors = {a: {k: tensor(v[a] if isinstance(v, dict) else v) for k, v in features.items()
                   if not isinstance(v, dict) or a in v} for a in labels}
    generator = torch.Generator().manual_seed(settings.seed)
    control = {a: control_labels(groups, c, settings.seed + i) for i, (a, c) in enumerate(n_classes.items())}
    random_folds = split_folds("random", groups, settings.folds, settings.seed)
    control_predictions = _out_of_fold(tensors, control, n_classes, random_folds, probes, settings, generator,
                                       progress)
    scores = []
    for split in splits:
        folds = random_folds if split == "random" else split_folds(split, groups, settings.folds, settings.seed)
        predictions = _out_of_fold(tensors, {a: y for a, (y, _) in encoded.items()}, n_classes, folds, probes,
                                   settings, generator, progress)
        clusters = groups if split == "template" else np.arange(n)
        for attribute, (y, classes) in encoded.items():
            control_chance = 1 / len(np.unique(control[attribute]))
            for probe in probes:
                for key in tensors[attribute]:
                    predicted = predictions[attribute, probe, key]
                    target, family = _target_and_family(key)
                    ci = cluster_bootstrap_ci(y, predicted, clusters, len(classes), settings.bootstrap, rng)
                    control_accuracy = balanced_accuracy(control[attribute], control_predictions[attribute, probe, key],
                                                         len(classes))
                    scores.append(ProbeScore(attribute, target, probe, balanced_accuracy(y, predicted, len(classes)),
                                             ci, control_accuracy, 1 / len(classes), n, len(np.unique(groups)),
                                             family, split, control_chance))
    return scores


# ---- one fitted probe, as an estimator --------------------------------------------------------
class MLPProbe(ClassifierMixin, BaseEstimator):
    """A single probe, a scikit-learn estimator: flat hyperparameters, so `clone`, `GridSearchCV` and
    `cross_val_score(probe, X, y, groups=templates, cv=GroupKFold(5))` work; `score` is the balanced
    accuracy. Saved without pickle: weights as safetensors, settings and class names as JSON.

    Examples:
        >>> probe = MLPProbe(hidden=0).fit(X, labels)                    # linear baseline
        >>> cross_val_score(MLPProbe(), X, labels, groups=template_ids, cv=GroupKFold(5))
        >>> probe.save("probe_self3"); MLPProbe.load("probe_self3").predict(X[:2])
    """

    def __init__(self, hidden: int = 32, components: int = 64, epochs: int = 100, lr: float = 3e-2,
                 weight_decay: float = 1e-2, seed: int = 0):
        if isinstance(hidden, ProbeSettings):
            raise TypeError("MLPProbe takes its hyperparameters flat; for a ProbeSettings: MLPProbe.from_settings(s)")
        self.hidden, self.components, self.epochs = hidden, components, epochs
        self.lr, self.weight_decay, self.seed = lr, weight_decay, seed

    @classmethod
    def from_settings(cls, settings: ProbeSettings) -> MLPProbe:
        """The estimator with a profile's probe settings (folds and bootstrap are the profile's, not its)."""
        return cls(settings.hidden, settings.components, settings.epochs, settings.lr, settings.weight_decay,
                   settings.seed)

    @property
    def settings(self) -> ProbeSettings:
        return ProbeSettings(hidden=self.hidden, components=self.components, epochs=self.epochs, lr=self.lr,
                             weight_decay=self.weight_decay, seed=self.seed)

    def fit(self, x: np.ndarray, y: list[str] | np.ndarray, groups=None) -> MLPProbe:
        """Fit on all rows (`groups` is accepted for scikit-learn compatibility and not used)."""
        indices, self.classes_ = encode_labels([str(v) for v in y])
        features = torch.as_tensor(np.asarray(x, np.float32))
        self.projection_ = Projection.fit(features, self.settings.components, self.settings.seed)
        generator = torch.Generator().manual_seed(self.settings.seed)
        z = self.projection_(features)[None]
        self.weights_ = train_batched(z, torch.as_tensor(indices)[None], len(self.classes_), self.settings.hidden,
                                      self.settings, generator)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Differentiable raw features (n, F) -> logits (n, C): what attribution methods call."""
        if getattr(self, "projection_", None) is None:
            raise NotFittedError("MLPProbe is not fitted: call fit() first")
        return _logits(self.weights_, self.projection_(x)[None])[0]

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.forward(torch.as_tensor(np.asarray(x, np.float32))), -1).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.classes_)[self.predict_proba(x).argmax(-1)]

    def score(self, x: np.ndarray, y) -> float:
        """Balanced accuracy on (x, y)."""
        index = {c: i for i, c in enumerate(self.classes_)}
        truth = np.asarray([index.get(str(v), -1) for v in y])
        predicted = self.predict_proba(x).argmax(-1)
        known = truth >= 0
        return balanced_accuracy(truth[known], predicted[known], len(self.classes_))

    def save(self, path: str | Path) -> None:
        """Write `path`.safetensors (tensors) and `path`.json (settings, classes)."""
        if getattr(self, "projection_", None) is None:
            raise NotFittedError("MLPProbe is not fitted: nothing to save")
        path = Path(path)
        tensors = {"mean": self.projection_.mean, "components": self.projection_.components,
                   "scale": self.projection_.scale, **{f"w{i}": w[0].contiguous() for i, w in enumerate(self.weights_)}}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path.with_suffix(".safetensors")))
        meta = {"format": PROBE_FORMAT, "version": 1, "settings": self.settings.to_json(), "classes": self.classes_}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> MLPProbe:
        path = Path(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if meta.get("format") != PROBE_FORMAT:
            raise MelodiaError(f"{path.with_suffix('.json')} is not a melodia probe")
        tensors = load_file(str(path.with_suffix(".safetensors")))
        n_weights = sum(k.startswith("w") for k in tensors)
        probe = cls.from_settings(ProbeSettings(**meta["settings"]))
        probe.classes_ = list(meta["classes"])
        probe.projection_ = Projection(tensors["mean"], tensors["components"], tensors["scale"])
        probe.weights_ = [tensors[f"w{i}"][None] for i in range(n_weights)]
        return probe

