"""melodia's probing side: open a model, measure its layers, record and capture attention, probe it.

    >>> from probing import trace
    >>> with trace(pipe) as tc:                       # a diffusers pipeline you already hold
    ...     pipe("a sad waltz played on the violin")
    >>> tc.word_heat_map("violin").plot()
"""


def __getattr__(name: str):
    """`trace` on first use (it imports torch and diffusers; `melodia --help` must not)."""
    if name == "trace":
        from probing.tracing import trace

        return trace
    raise AttributeError(f"module 'probing' has no attribute {name!r}")
