"""Forward hooks that see (and may replace) the Q and K of chosen attention modules.

Mechanism: a forward hook on each module's `to_q`/`to_k` sees the projected Q/K (and, by
returning a tensor, replaces it: the default SDPA processor keeps running, no full attention map
is materialised); a pre-hook on the attention module records what it attends to (kind, mask,
extra kwargs such as rotary embeddings); a post-hook hands the finished call to `on_call`. The
denoiser's own pre-hook gives the timestep. Everything is removed in `finally`, also after an
exception, and only what was added is removed, so contexts nest.

Examples:
    >>> calls = []
    >>> with AttentionHooks(model, ["mid_block.attentions.0.transformer_blocks.0.attn1"], on_call=calls.append):
    ...     model.generate("a calm waltz", steps=2, guidance=3.0, seed=0)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from probing.errors import MelodiaError


@dataclass
class AttentionCall:
    """One forward of one attention module.

    query/key: projected, before the head split, (batch, tokens, heads*dim); batch is the
    denoiser's batch, i.e. [uncond, cond] under classifier-free guidance.
    """

    path: str
    module: torch.nn.Module
    kind: str  # "self" | "cross", decided by what the call attends to
    timestep: float | None
    forward_index: int  # how many denoiser forwards came before this one inside the context
    latent_hw: tuple[int, ...]
    call_kwargs: dict[str, Any] = field(default_factory=dict)
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None

    @property
    def attention_mask(self) -> torch.Tensor | None:
        return self.call_kwargs.get("attention_mask")


QKReplacer = Callable[[AttentionCall, str, torch.Tensor], "torch.Tensor | None"]


def _timestep_of(args: tuple, kwargs: dict) -> float | None:
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    if t is None:
        return None
    t = torch.as_tensor(t).flatten()
    return float(t[0]) if t.numel() and not t.is_meta else None


def _sample_of(args: tuple, kwargs: dict) -> torch.Tensor:
    if args:
        return args[0]
    for name in ("sample", "hidden_states", "x"):
        if name in kwargs:
            return kwargs[name]
    raise MelodiaError("cannot find the latent input of the denoiser call; this model family needs an adapter update")


class AttentionHooks:
    """Context manager: hooks on `paths` (attention modules of `model.denoiser`).

    on_call(call) runs after each module forward; replace(call, "q"|"k", tensor) may return a
    tensor that replaces the projection output. With `expected_per_forward`, every denoiser
    forward must produce exactly that many calls, else RuntimeError (a diffusers change that
    bypasses the hooks fails loudly instead of capturing nothing).
    """

    def __init__(self, model, paths: Iterable[str], on_call: Callable[[AttentionCall], None] | None = None,
                 replace: QKReplacer | None = None, expected_per_forward: int | None = None):
        self.model = model
        modules = model.attention_modules()
        self.paths = list(paths)
        unknown = [p for p in self.paths if p not in modules]
        if unknown:
            raise MelodiaError(f"{unknown[0]} is not an attention module of {model.name}; see `melodia layers`")
        self.modules = {p: modules[p] for p in self.paths}
        self.on_call, self.replace = on_call, replace
        self.expected = expected_per_forward
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: dict[str, AttentionCall] = {}
        self._timestep: float | None = None
        self._latent_hw: tuple[int, ...] = ()
        self._forwards = 0
        self._calls_this_forward = 0

    # ---- denoiser --------------------------------------------------------------------------
    def _denoiser_pre(self, module, args, kwargs):
        self._timestep = _timestep_of(args, kwargs)
        self._latent_hw = tuple(_sample_of(args, kwargs).shape[2:])
        self._calls_this_forward = 0

    def _denoiser_post(self, module, args, kwargs, output):
        self._forwards += 1
        if self.expected is not None and self._calls_this_forward != self.expected:
            raise RuntimeError(f"expected {self.expected} attention calls in one denoiser forward, saw "
                               f"{self._calls_this_forward}: the model bypasses melodia's hooks (diffusers "
                               "version change, fused projections or a custom processor?)")

    # ---- attention modules -----------------------------------------------------------------
    def _module_pre(self, path):
        def hook(module, args, kwargs):
            context = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            self._pending[path] = AttentionCall(path, module, "self" if context is None else "cross",
                                                self._timestep, self._forwards, self._latent_hw, dict(kwargs))
        return hook

    def _projection(self, path, which):
        def hook(module, args, output):
            call = self._pending.get(path)
            if call is None:  # projection used outside an attention forward: not ours to touch
                return None
            if self.replace is not None:
                replaced = self.replace(call, which, output)
                if replaced is not None:
                    if replaced.shape != output.shape:
                        raise RuntimeError(f"{path}: replacement {which} has shape {tuple(replaced.shape)}, "
                                           f"expected {tuple(output.shape)}")
                    output = replaced.to(dtype=output.dtype, device=output.device)
            setattr(call, "query" if which == "q" else "key", output)
            return output
        return hook

    def _module_post(self, path):
        def hook(module, args, output):
            call = self._pending.pop(path, None)
            if call is None:
                return
            self._calls_this_forward += 1
            if self.on_call is not None:
                self.on_call(call)
        return hook

    # ---- context -----------------------------------------------------------------------------
    def __enter__(self) -> "AttentionHooks":
        try:
            denoiser = self.model.denoiser
            self._handles.append(denoiser.register_forward_pre_hook(self._denoiser_pre, with_kwargs=True))
            self._handles.append(denoiser.register_forward_hook(self._denoiser_post, with_kwargs=True))
            for path, module in self.modules.items():
                self._handles.append(module.register_forward_pre_hook(self._module_pre(path), with_kwargs=True))
                self._handles.append(module.to_q.register_forward_hook(self._projection(path, "q")))
                self._handles.append(module.to_k.register_forward_hook(self._projection(path, "k")))
                self._handles.append(module.register_forward_hook(self._module_post(path)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._pending.clear()

    @property
    def forwards(self) -> int:
        """Denoiser forwards seen so far inside this context."""
        return self._forwards
