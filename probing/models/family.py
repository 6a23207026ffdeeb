"""`Family`: what a model family file declares about itself (`FAMILY = Family(...)`); imports nothing.

Examples:
    >>> FAMILY = Family(name="audioldm2", adapter="AudioLDM2Model", pipelines=("AudioLDM2Pipeline",),
    ...                 tiny="tiny-audioldm2", reference_config="audioldm2_music_unet", order=1)
    >>> FAMILY.pipelines
    ('AudioLDM2Pipeline',)
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    """One model family: its adapter (a class in the declaring module), the diffusers pipeline classes it
    serves, its offline tiny model's name (the module's `build_tiny_pipeline(seed)` builds it), the pinned
    config of the real checkpoint's denoiser (probing/models/configs/<name>.json), and its place in
    listings (`order`: lower first)."""

    name: str
    adapter: str
    pipelines: tuple[str, ...]
    tiny: str | None = None
    reference_config: str | None = None
    order: int = 100
