"""The editing methods and the editor's input limits, importable without torch (the CLI parses with them).

Examples:
    >>> "melodia" in METHODS and "flowedit" in METHODS_BY_PREDICTION["flow"]
    True
"""
from __future__ import annotations

METHODS = ("melodia", "inversion", "ddim", "sdedit", "ddpm-friendly", "flowedit")
# Which methods each kind of model runs ("inversion" is "ddim" on DDPM-family models).
METHODS_BY_PREDICTION = {"epsilon": ("melodia", "inversion", "ddim", "sdedit", "ddpm-friendly"),
                         "flow": ("melodia", "inversion", "sdedit", "flowedit"),
                         "edm": ("melodia", "inversion", "sdedit")}  # Stable Audio Open's ODE in sigma
ODE_PREDICTIONS = ("flow", "edm")  # edited by Euler over the adapter's sigmas (editing.flow)
SOURCE_PROMPT_METHODS = ("ddpm-friendly", "flowedit")  # the methods that take a source description
INVERTING_METHODS = ("melodia", "inversion", "ddim")  # start from the ODE inversion (inversion_refinements)
WINDOW_OVERLAP = 0.25  # of the model's window, for sources longer than it
MAX_SOURCE_SECONDS = 600.0
