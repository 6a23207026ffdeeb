"""Forward hooks that see (and may replace) the Q and K of chosen attention modules.

Mechanism: a forward hook on each projection the adapter names (`model.qk_taps`: `to_q`/`to_k`,
or channel slices of a fused `to_qkv`) sees the projected Q/K (and, by returning a tensor,
replaces it: the family's processor keeps running, no full attention map is materialised); a
pre-hook on the attention module records what it attends to (kind, mask, extra arguments such as
rotary embeddings, bound by name); a post-hook hands the finished call to `on_call`. The
denoiser's own pre-hook gives the timestep. Everything is removed in `finally`, also after an
exception, and only what was added is removed, so contexts nest.

Examples:
    >>> calls = []
    >>> with AttentionHooks(model, ["mid_block.attentions.0.transformer_blocks.0.attn1"], on_call=calls.append):
    ...     model.generate("a calm waltz", steps=2, guidance=3.0, seed=0)
"""
from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from probing.errors import MelodiaError


@dataclass
class AttentionCall:
    """One forward of one attention module.

    query/key: projected, before the head split, (batch, tokens, heads*dim) (the tapped channels);
    batch is the denoiser's batch, i.e. [uncond, cond] under classifier-free guidance.
    call_kwargs: every argument of the module's forward but the first (hidden states), by name.
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
# attend(call, query, key, value, sdpa_kwargs, torch_sdpa) -> the attention output, or None for torch's own SDPA
Attender = Callable[[AttentionCall, torch.Tensor, torch.Tensor, torch.Tensor, dict, Callable], "torch.Tensor | None"]

# Contexts with an `attend`, in entry order. While any is open, torch's SDPA function is replaced by one
# dispatcher (installed by the first, removed by the last, whatever order they close in).
_ATTENDING: list[AttentionHooks] = []
_ATTENDING_LOCK = threading.Lock()
_underlying_sdpa: Callable = torch.nn.functional.scaled_dot_product_attention  # what the dispatcher replaced


def _dispatch_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """torch's SDPA while a context attends: a call made inside a hooked module's forward, on the thread running
    it, goes to that context's `attend` (the innermost context first); everything else to torch unchanged."""
    sdpa_kwargs = {"attn_mask": attn_mask, "dropout_p": dropout_p, "is_causal": is_causal, "scale": scale, **kwargs}
    for hooks in reversed(_ATTENDING):
        call = hooks.running_call()
        if call is not None:
            output = hooks.attend(call, query, key, value, sdpa_kwargs, _underlying_sdpa)
            if output is not None:
                return output
    return _underlying_sdpa(query, key, value, **sdpa_kwargs)


def bound_arguments(function: Callable, args: tuple, kwargs: dict,
                    signature: inspect.Signature | None = None) -> dict[str, Any]:
    """A call's arguments by parameter name, positional ones bound by `function`'s signature and its
    catch-all keyword parameter (whatever its name) unpacked."""
    signature = signature or inspect.signature(function)
    bound = signature.bind_partial(*args, **kwargs).arguments
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            bound.update(bound.pop(name, {}))
    return dict(bound)


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
    tensor that replaces the projection output. attend(call, q, k, v, kwargs, sdpa) sees every
    `torch.nn.functional.scaled_dot_product_attention` call made inside a hooked module's forward on
    the thread running it (heads split, as the processor passes them) and may return the output in
    its place (None: torch computes it; `sdpa` is torch's function, for the rows it leaves to torch);
    SDPA calls outside the hooked modules, and on other threads, are untouched. With
    `expected_per_forward`, every denoiser forward must produce exactly that many calls, else
    RuntimeError (a diffusers change that bypasses the hooks fails loudly instead of capturing nothing).
    """

    def __init__(self, model, paths: Iterable[str], on_call: Callable[[AttentionCall], None] | None = None,
                 replace: QKReplacer | None = None, expected_per_forward: int | None = None,
                 attend: Attender | None = None):
        self.model = model
        modules = model.attention_modules()
        self.paths = list(paths)
        unknown = [p for p in self.paths if p not in modules]
        if unknown:
            raise MelodiaError(f"{unknown[0]} is not an attention module of {model.name}; see `melodia layers`")
        self.modules = {p: modules[p] for p in self.paths}
        self._signatures: dict[type, inspect.Signature] = {}
        self.on_call, self.replace, self.attend = on_call, replace, attend
        self._running = threading.local()  # .call: the hooked module forward in progress on this thread
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
    def _bound_kwargs(self, module, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The forward's arguments after the hidden states, by name (positional ones bound by signature)."""
        if len(args) <= 1:
            return dict(kwargs)
        signature = self._signatures.get(type(module))
        if signature is None:
            signature = self._signatures[type(module)] = inspect.signature(module.forward)
        bound = bound_arguments(module.forward, args, kwargs, signature)
        bound.pop(next(iter(signature.parameters)))
        return bound

    def _module_pre(self, path):
        def hook(module, args, kwargs):
            call_kwargs = self._bound_kwargs(module, args, kwargs)
            self._pending[path] = self._running.call = AttentionCall(
                path, module, self.model.attention_kind(module, call_kwargs), self._timestep, self._forwards,
                self._latent_hw, call_kwargs)
        return hook

    def _projection(self, path, taps):
        def hook(module, args, output):
            call = self._pending.get(path)
            if call is None:  # projection used outside an attention forward: not ours to touch
                return None
            for tap in taps:
                seen = output if tap.channels is None else output[..., tap.channels]
                if self.replace is not None:
                    replaced = self.replace(call, tap.which, seen)
                    if replaced is not None:
                        if replaced.shape != seen.shape:
                            raise RuntimeError(f"{path}: replacement {tap.which} has shape {tuple(replaced.shape)}, "
                                               f"expected {tuple(seen.shape)}")
                        seen = replaced.to(dtype=output.dtype, device=output.device)
                        if tap.channels is None:
                            output = seen
                        else:
                            output = output.clone()
                            output[..., tap.channels] = seen
                setattr(call, "query" if tap.which == "q" else "key", seen)
            return output
        return hook

    def _module_post(self, path):
        def hook(module, args, output):
            call = self._pending.pop(path, None)
            self._running.call = None
            if call is None:
                return
            self._calls_this_forward += 1
            if self.on_call is not None:
                self.on_call(call)
        return hook

    def running_call(self) -> AttentionCall | None:
        """The hooked module call running on this thread, if any."""
        return getattr(self._running, "call", None)

    # ---- context -----------------------------------------------------------------------------
    def __enter__(self) -> "AttentionHooks":
        global _underlying_sdpa
        if self.attend is not None:
            with _ATTENDING_LOCK:
                if not _ATTENDING:
                    _underlying_sdpa = torch.nn.functional.scaled_dot_product_attention
                    torch.nn.functional.scaled_dot_product_attention = _dispatch_sdpa
                _ATTENDING.append(self)
        try:
            denoiser = self.model.denoiser
            self._handles.append(denoiser.register_forward_pre_hook(self._denoiser_pre, with_kwargs=True))
            self._handles.append(denoiser.register_forward_hook(self._denoiser_post, with_kwargs=True))
            for path, module in self.modules.items():
                self._handles.append(module.register_forward_pre_hook(self._module_pre(path), with_kwargs=True))
                by_projection: dict[int, list] = {}
                for tap in self.model.qk_taps(module):
                    by_projection.setdefault(id(tap.projection), []).append(tap)
                for taps in by_projection.values():
                    self._handles.append(taps[0].projection.register_forward_hook(self._projection(path, taps)))
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
        self._running.call = None
        with _ATTENDING_LOCK:
            if self in _ATTENDING:
                _ATTENDING.remove(self)
                if not _ATTENDING and torch.nn.functional.scaled_dot_product_attention is _dispatch_sdpa:
                    torch.nn.functional.scaled_dot_product_attention = _underlying_sdpa

    @property
    def forwards(self) -> int:
        """Denoiser forwards seen so far inside this context."""
        return self._forwards
