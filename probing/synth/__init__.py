"""Synthetic music with ground truth: one score, any instrument, style or mood; captions; a classifier.

Examples:
    >>> from probing.synth import render_clip, caption
    >>> render_clip("piano", "waltz", "happy", score_seed=0).shape
    (65536,)
"""
from probing.synth.captions import caption, templates
from probing.synth.classes import class_lists
from probing.synth.render import render, render_clip
from probing.synth.score import CLIP_SECONDS, SAMPLE_RATE, Note, Score, make_score

__all__ = [
    "CLIP_SECONDS",
    "SAMPLE_RATE",
    "Note",
    "Score",
    "caption",
    "class_lists",
    "make_score",
    "render",
    "render_clip",
    "templates",
]
