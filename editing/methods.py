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


def check_refinements(method: str, refine: object) -> None:
    """Refuse an `inversion_refinements` that is not a whole number >= 0, or one given to a method that does
    not start from the ODE inversion (None, the model's default, and 0 pass for every method)."""
    from probing.errors import MelodiaError

    if refine is not None and (isinstance(refine, bool) or not isinstance(refine, int) or refine < 0):
        raise MelodiaError(f"inversion_refinements must be a whole number >= 0, got {refine!r}")
    if refine and method not in INVERTING_METHODS:
        raise MelodiaError(f"inversion_refinements refine the ODE inversion of {', '.join(INVERTING_METHODS)}; "
                           f"{method} does not invert that way")
