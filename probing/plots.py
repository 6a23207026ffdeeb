"""Pictures of what the layers encode: the layer profile and attention heatmaps beside the spectrogram.

Every function returns the matplotlib Figure (shown inline in a notebook) and, given `path`,
also writes a PNG atomically.

Examples:
    >>> plot_profile(LayerProfile.load("profile.json"), "profile.png")
    >>> plot_cross_attention(token_maps, tokens, mel)            # one panel per text token
    >>> plot_self_attention(self_map, grid=(32, 8), mel=mel, query=(10, 3))
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from probing.paths import atomic_output
from probing.profile import LayerProfile

KIND_COLOURS = {"cross": "tab:blue", "self": "tab:orange"}


def pyplot():
    """matplotlib.pyplot, on the Agg backend unless a notebook's inline backend is active."""
    import matplotlib

    if "ipykernel" not in matplotlib.get_backend().lower() and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: str | Path | None, dpi: int = 110):
    """Write `figure` as PNG atomically when `path` is given; return the figure."""
    if path is not None:
        with atomic_output(path, ".png") as tmp:
            figure.savefig(tmp, dpi=dpi, bbox_inches="tight")
    return figure


def write_figure(figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `figure` as PNG atomically and close it (a figure made for a file, not shown inline)."""
    try:
        save_figure(figure, path, dpi=dpi)
    finally:
        pyplot().close(figure)
    return Path(path)


FAMILY_STYLES = {"flat": "o-", "word": "s-", "keys": "^-"}


def plot_profile(profile: LayerProfile, path: str | Path | None = None, probe: str = "mlp",
                 selection: tuple[int, ...] | None = None):
    """Balanced accuracy per layer, one row per split and one panel per attribute: self-attention and
    each cross-attention feature family (word-aligned, key summary, flattened) with the 95 % CI of
    the headline family, its linear probe (dashed), control task (dotted) and random-denoiser
    baseline (x), chance, the text-only baseline, and the selected injection band (shaded)."""
    plt = pyplot()
    layers = np.arange(1, profile.n_layers + 1)
    attributes, splits = list(profile.attributes), profile.splits or ["template"]
    figure, axes = plt.subplots(len(splits), len(attributes), figsize=(4.6 * len(attributes), 3.4 * len(splits)),
                                sharey=True, squeeze=False, layout="constrained")
    for row, split in zip(axes, splits):
        for ax, attribute in zip(row, attributes):
            if selection:
                ax.axvspan(min(selection) - 0.5, max(selection) + 0.5, color="0.9", label="injected (self)")
            for kind, colour in KIND_COLOURS.items():
                primary = profile.primary_family(kind)
                for family in profile.families(kind):
                    accuracy = profile.curve(attribute, kind, probe, features=family, split=split)
                    if np.isnan(accuracy).all():
                        continue
                    ax.plot(layers, accuracy, FAMILY_STYLES[family], color=colour, ms=3,
                            alpha=1.0 if family == primary else 0.45, label=f"{kind}/{family}")
                    if family != primary:
                        continue
                    ax.fill_between(layers, profile.curve(attribute, kind, probe, value="ci_low", features=family,
                                                          split=split),
                                    profile.curve(attribute, kind, probe, value="ci_high", features=family,
                                                  split=split), color=colour, alpha=0.2, lw=0)
                    ax.plot(layers, profile.curve(attribute, kind, "linear", features=family, split=split), "--",
                            color=colour, lw=1, label=f"{kind}/{family} linear")
                    ax.plot(layers, profile.curve(attribute, kind, probe, value="control", features=family,
                                                  split=split), ":", color=colour, lw=1,
                            label=f"{kind}/{family} control (template nuisance)")
                    random = profile.curve(attribute, kind, probe, random_denoiser=True, features=family, split=split)
                    if not np.isnan(random).all():
                        ax.plot(layers, random, "x", color=colour, ms=5, label=f"{kind}/{family}, random denoiser")
            text = profile.score(attribute, "text", probe, split=split)
            if text is not None:
                ax.axhline(text.accuracy, color="tab:green", ls="-.", lw=1, label="text embedding only")
            ax.axhline(1 / len(profile.attributes[attribute]), color="0.4", lw=1, label="chance")
            ax.set_title(f"{attribute} ({len(profile.attributes[attribute])} classes), {split} split", fontsize=10)
            ax.set_xlabel("layer")
            ax.set_xticks(layers)
            ax.set_ylim(0, 1.02)
        row[0].set_ylabel("balanced accuracy")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    figure.suptitle(f"{profile.model}: what each attention layer encodes")
    return save_figure(figure, path)


def _mel_panel(ax, mel: np.ndarray, title: str = "spectrogram") -> None:
    ax.imshow(mel, origin="lower", aspect="auto", cmap="magma")
    ax.set_title(title)
    ax.set_xlabel("time frame")
    ax.set_ylabel("mel band")


def plot_cross_attention(token_maps: np.ndarray, tokens: list[str], mel: np.ndarray | None = None,
                         path: str | Path | None = None, title: str = ""):
    """Where each text token is attended: token_maps (tokens, time, freq), one panel per token,
    each beside the spectrogram `mel` (mel bands, frames); time runs left to right, frequency
    upwards in every panel, and all token panels share one colour scale."""
    plt = pyplot()
    panels = len(tokens) + (mel is not None)
    figure, axes = plt.subplots(1, panels, figsize=(2.3 * panels, 2.8), squeeze=False, layout="constrained")
    axes = list(axes[0])
    if mel is not None:
        _mel_panel(axes.pop(0), mel)
    high = float(np.max(token_maps[: len(tokens)])) or 1.0
    for ax, token, heat in zip(axes, tokens, token_maps):
        ax.imshow(np.asarray(heat).T, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=high)
        ax.set_title(repr(token), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def plot_self_attention(self_map: np.ndarray, grid: tuple[int, int], mel: np.ndarray | None = None,
                        query: tuple[int, int] | None = None, path: str | Path | None = None, title: str = ""):
    """A self-attention map (queries x keys over a (time, freq) grid): the full matrix, and where one
    `query` cell (time, freq) looks, drawn on the grid beside the spectrogram."""
    plt = pyplot()
    time_steps, bands = grid
    query = query or (time_steps // 2, bands // 2)
    panels = 2 + (mel is not None)
    figure, axes = plt.subplots(1, panels, figsize=(3.4 * panels, 3.0), squeeze=False, layout="constrained")
    axes = list(axes[0])
    if mel is not None:
        _mel_panel(axes.pop(0), mel)
    axes[0].imshow(self_map, cmap="viridis", aspect="auto")
    axes[0].set_title("queries x keys")
    axes[0].set_xlabel("key token")
    axes[0].set_ylabel("query token")
    row = np.asarray(self_map)[query[0] * bands + query[1]].reshape(time_steps, bands)
    axes[1].imshow(row.T, origin="lower", aspect="auto", cmap="viridis")
    axes[1].plot([query[0]], [query[1]], "r+", ms=10)
    axes[1].set_title(f"where query (t={query[0]}, f={query[1]}) looks")
    axes[1].set_xlabel("time")
    axes[1].set_ylabel("frequency")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
