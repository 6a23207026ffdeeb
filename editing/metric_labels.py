"""How the bench reports each metric: its label in tables and plots, and whether higher is better.

Examples:
    >>> TABLE_METRICS["lpaps"]
    ('LPAPS', False)
"""
from __future__ import annotations

TABLE_METRICS = {  # shown in the Markdown table and the plot: label, higher is better
    "clap": ("CLAP", True), "lpaps": ("LPAPS", False), "chroma": ("Chroma", True),
    "melody_raw_chroma": ("Melody (raw chroma)", True), "melody_raw_pitch": ("Melody (raw pitch)", True),
    "adherence": ("Classifier", True), "ideal_log_mel_distance": ("Log-mel to ideal", False),
    "ideal_chroma_similarity": ("Chroma to ideal", True), "ideal_melody_raw_chroma": ("Melody to ideal", True)}
