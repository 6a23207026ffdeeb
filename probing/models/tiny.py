"""Tiny, architecture-faithful pipelines with random weights, built offline.

Each tiny model is a real diffusers pipeline of the family it stands for, with every component
shrunk but laid out like the real checkpoint (same block types, same attention pattern, same
conditioning path), so layer discovery, capture, inversion and editing can be tested without a
model hub. Each family file builds its own (`build_tiny_pipeline(seed)`, found through the
registry); the parts they share (in-memory tokenizers, seeding) are in probing.models.tiny_parts.

Examples:
    >>> from probing.models.tiny import build_tiny
    >>> pipe = build_tiny("tiny-audioldm2")
    >>> pipe.set_progress_bar_config(disable=True)
    >>> audio = pipe("a piano melody", num_inference_steps=2, audio_length_in_s=1.28).audios
    >>> audio.shape
    (1, 20480)
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from probing.models.registry import family_module, family_of_tiny

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# Bump when a builder changes, so cached pipeline folders from older builders are not reused.
TINY_VERSION = "1"


def build_tiny(name: str, seed: int = 0) -> DiffusionPipeline:
    """Build a tiny pipeline in memory: random weights (seeded per component), no download.

    Args:
        name: one of `tiny_names()` (probing.models.registry).
        seed: seeds every component's initialisation; the same seed gives the same weights.

    Returns:
        A `diffusers.DiffusionPipeline` of the family's class on the CPU in float32.

    Examples:
        >>> build_tiny("tiny-unet").__class__.__name__
        'StableDiffusionPipeline'
    """
    pipe = family_module(family_of_tiny(name).name).build_tiny_pipeline(seed)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()  # as from_pretrained leaves them: dropout off
    return pipe


def default_cache_dir() -> Path:
    """`$MELODIA_CACHE/tiny` if that variable is set, else `~/.cache/melodia/tiny`."""
    root = os.environ.get("MELODIA_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "melodia") / "tiny"


def tiny_pipeline_dir(name: str, cache_dir: Path | None = None) -> Path:
    """A local pipeline folder for `name` (seed 0), built and saved on first use, reused after.

    The folder is written under a temporary name and renamed into place, so a crash never leaves
    a half-written pipeline where a later call would take it for a finished one.

    Args:
        name: one of `tiny_names()`.
        cache_dir: parent folder; default `default_cache_dir()`.

    Returns:
        `<cache_dir>/<name>-<TINY_VERSION>`, loadable with `<PipelineClass>.from_pretrained`.
    """
    family_of_tiny(name)  # ValueError naming the tiny models for any other name
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"{name}-{TINY_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir))
    try:
        build_tiny(name, seed=0).save_pretrained(staging, safe_serialization=True)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: keep its folder
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
