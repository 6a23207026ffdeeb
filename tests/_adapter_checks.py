"""Checks shared by the adapter test files (tests/test_adapters.py and one file per family).

What it holds: the forward-hook inventory of a model (`hook_state`), the "capture changes nothing and leaves
no hook" check, one run's attention calls with their V and out-projection input (`recorded_attention`), and
the recomputation of that input as maps @ V (`attend`, `attention_error`). Imported as
`from _adapter_checks import ...` (tests/ is not a package).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
import torch

from probing.hooks import AttentionCall, AttentionHooks
from probing.maps import Reduction, reduce_call
from probing.models.base import DiffusionModel
from probing.recorder import AttentionRecorder

Recorded = dict[str, tuple[AttentionCall, torch.Tensor, torch.Tensor]]  # path -> (call, V, input of the out-proj)
ValueOf = Callable[[torch.nn.Module], tuple[torch.nn.Module, slice]]  # attention -> (projection with V, its channels)


# ---- hooks: capture changes nothing, leaves nothing ----------------------------------------------------
def hook_state(model: DiffusionModel) -> dict[str, tuple]:
    """Every forward (pre-)hook id on the denoiser, each attention module, its submodules and its Q/K taps."""
    modules = {"denoiser": model.denoiser}
    for path, attention in model.attention_modules().items():
        modules.update({f"{path}.{name}" if name else path: m for name, m in attention.named_modules()})
        modules.update({f"{path}[{tap.which}]": tap.projection for tap in model.qk_taps(attention)})
    return {k: (tuple(m._forward_hooks), tuple(m._forward_pre_hooks)) for k, m in modules.items()}


def check_capture_changes_nothing(model: DiffusionModel, generate: Callable[[], np.ndarray]) -> AttentionRecorder:
    """Recording every module in two passes keeps `generate()` bit for bit; in one pass (the default) it
    moves it by float rounding only and records the same maps; no hook and no SDPA wrapper is left,
    also after an exception. Returns the one-pass recorder."""
    hooks_before, sdpa = hook_state(model), torch.nn.functional.scaled_dot_product_attention
    before = generate()
    with AttentionRecorder(model, "*", one_pass=False) as two_passes:
        assert np.array_equal(before, generate())
    with AttentionRecorder(model, "*") as recorder:
        during = generate()
    np.testing.assert_allclose(during, before, rtol=0, atol=1e-4 * max(1.0, float(np.abs(before).max())))
    for module in recorder.modules:
        np.testing.assert_allclose(recorder.stacked(module.path)[1].astype(np.float32),
                                   two_passes.stacked(module.path)[1].astype(np.float32), rtol=0, atol=2e-3)
    assert hook_state(model) == hooks_before and torch.nn.functional.scaled_dot_product_attention is sdpa
    with pytest.raises(KeyboardInterrupt):
        with AttentionRecorder(model, "*"):
            assert hook_state(model) != hooks_before
            raise KeyboardInterrupt
    assert hook_state(model) == hooks_before and torch.nn.functional.scaled_dot_product_attention is sdpa
    return recorder


# ---- one run's attention calls, V and the processor's output -------------------------------------------
def to_v(attention: torch.nn.Module) -> tuple[torch.nn.Module, slice]:
    """V of a diffusers-style attention module: every channel of `to_v`."""
    return attention.to_v, slice(None)


def out_projection(attention: torch.nn.Module) -> torch.nn.Module:
    """The linear out-projection: `to_out[0]` where `to_out` is a [Linear, Dropout] list, else `to_out`."""
    return attention.to_out[0] if isinstance(attention.to_out, torch.nn.ModuleList) else attention.to_out


def guided_step(model: DiffusionModel, prompt: str, guidance: float = 3.0) -> Callable[[], object]:
    """A run for `recorded_attention`: one guided step of `model.generate`, latents only."""
    return lambda: model.generate(prompt, steps=1, guidance=guidance, seed=0, decode=False)


def _keep(store: dict, path: str, tensor: torch.Tensor) -> None:
    """Keep the first tensor seen for `path`; returns None so that a hook leaves the model's tensors alone."""
    store.setdefault(path, tensor)


def recorded_attention(model: DiffusionModel, paths: Iterable[str], run: Callable[[], object],
                       value_of: ValueOf = to_v) -> Recorded:
    """path -> (attention call, V, processor output before the out-projection) of each path's one call in `run()`."""
    paths, calls, values, outputs, handles = list(paths), [], {}, {}, []
    modules = model.attention_modules()
    for path in paths:
        projection, channels = value_of(modules[path])
        handles.append(projection.register_forward_hook(
            lambda m, a, o, p=path, c=channels: _keep(values, p, o[..., c])))
        handles.append(out_projection(modules[path]).register_forward_pre_hook(
            lambda m, a, p=path: _keep(outputs, p, a[0])))
    try:
        with AttentionHooks(model, paths, on_call=calls.append), torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    assert sorted(c.path for c in calls) == sorted(paths), "one call of each path"
    return {c.path: (c, values[c.path], outputs[c.path]) for c in calls}


# ---- recomputed maps @ V -------------------------------------------------------------------------------
def attend(model: DiffusionModel, call: AttentionCall, value: torch.Tensor,
           head_dim: int | None = None) -> torch.Tensor:
    """Maps (B, H, N, M) from `reduce_call` @ V, grouped KV heads repeated: (B, N, H*d), the out-projection's input."""
    probs = reduce_call(model, call, Reduction(heads="all", grid=None, batch="both"))
    batch, heads = probs.shape[:2]
    head_dim = head_dim or call.query.shape[-1] // heads  # differential attention: Q holds 2H heads, pass d
    value = value.unflatten(-1, (-1, head_dim)).transpose(1, 2)  # (B, KV heads, M, d)
    value = value.repeat_interleave(heads // value.shape[1], dim=1)  # grouped KV heads
    return (probs @ value.float()).transpose(1, 2).reshape(batch, -1, heads * head_dim)


def attention_error(model: DiffusionModel, call: AttentionCall, value: torch.Tensor, output: torch.Tensor,
                    rows: slice = slice(None), head_dim: int | None = None) -> float:
    """Largest |attend(...) - output| over the given query rows."""
    return (attend(model, call, value, head_dim) - output.float())[:, rows].abs().max().item()


def check_capture_holds_the_longest_context(model: DiffusionModel, folder: Path) -> None:
    """For a family that pads its context per batch: capture sizes the key axis for the longest prompt."""
    from probing.capture import CaptureSettings, capture
    from probing.layers import measure_layer_table
    from probing.prompts import PromptSet

    short, long = "violin", "a very long and slow and sad waltz played on a quiet old violin with a piano"
    lengths = [model.context_tokens([p]) for p in (short, long)]
    assert lengths[0] < lengths[1] == model.context_tokens([short, long])
    cross = [m for m in measure_layer_table(model).modules if m.kind == "cross"]
    assert cross[0].key_tokens < lengths[1]  # the dummy forward's context is shorter: the store must not use it
    store = capture(model, PromptSet([short, long], {}, [-1, -1]), str(folder / "context.zarr"),
                    CaptureSettings(layers="cross:1", steps=1), progress=False)
    maps = store.read(store.specs[0].name)
    assert maps.shape[-1] == lengths[1]
    assert (maps[0][..., lengths[0]:] == 0).all() and (maps[1][..., lengths[0]:] != 0).any()
