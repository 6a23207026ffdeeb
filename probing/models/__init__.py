"""Model adapters and `load_model`, the one way melodia opens a diffusion model.

Examples:
    >>> model = load_model("tiny-audioldm2")          # offline, random weights
    >>> model.family
    'audioldm2'

A diffusers pipeline already in memory (a notebook's) loads the same way:

    >>> model = load_model(pipe)  # doctest: +SKIP
"""
from __future__ import annotations

import difflib
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from probing.errors import MelodiaError
from probing.hub import hub_offline
from probing.paths import SHIPPED_WEIGHTS
from probing.models.registry import families, module_path, tiny_names

if TYPE_CHECKING:
    import torch

    from diffusers import DiffusionPipeline

    from probing.models.base import DiffusionModel

DEFAULT_MODEL = "testbed"
SHIPPED_NAMES = tuple(SHIPPED_WEIGHTS)
# Every family declares itself in its own file (probing.models.registry reads the declarations
# without importing them, so `melodia --help` loads no torch); a family module is imported on first use.
ADAPTERS = {pipeline: f"{module_path(name)}:{family.adapter}" for name, family in families().items()
            for pipeline in family.pipelines}
TINY_NAMES = tiny_names()
BUILTIN_NAMES = (*SHIPPED_NAMES, *TINY_NAMES)


def __getattr__(name: str):
    """`Conditioning` and `DiffusionModel` on first use (they import torch and diffusers)."""
    if name in ("Conditioning", "DiffusionModel"):
        from probing.models import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _adapter_for(class_name: str, name: str) -> type[DiffusionModel]:
    if class_name in ADAPTERS:
        module, adapter = ADAPTERS[class_name].split(":")
        return getattr(importlib.import_module(module), adapter)
    raise MelodiaError(f"{name}: pipeline class {class_name} is not supported "
                       f"(supported: {', '.join(sorted(ADAPTERS))})")


def _registered_base(pipeline_class: type) -> str | None:
    """The nearest class in `pipeline_class`'s MRO that has an adapter (a user's subclass gets its parent's)."""
    return next((c.__name__ for c in pipeline_class.__mro__ if c.__name__ in ADAPTERS), None)


def _quiet_loading() -> None:
    """No per-component loading bars from diffusers/transformers: melodia shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _load_pipeline(source: str | Path, name: str, dtype: torch.dtype):
    """The pipeline in folder or hub id `source`; never retries an unreachable hub."""
    from diffusers import DiffusionPipeline

    from probing.testbed.dit import TestbedDiTPipeline
    from probing.testbed.pipeline import TestbedPipeline

    folder = Path(source)
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.exists():
            raise MelodiaError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
        class_name = json.loads(index.read_text())["_class_name"]
        own = {"TestbedPipeline": TestbedPipeline, "TestbedDiTPipeline": TestbedDiTPipeline}
        pipeline_class = own.get(class_name, DiffusionPipeline)
        return pipeline_class.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    try:
        return DiffusionPipeline.from_pretrained(str(source), dtype=dtype, use_safetensors=True,
                                                 local_files_only=hub_offline())
    except (OSError, ValueError) as error:
        raise MelodiaError(f"{_not_here(name)} ({type(error).__name__})") from None


def _source_for(name: str) -> Path | str:
    if name in SHIPPED_NAMES:
        from probing.testbed.build import testbed_weights_dir

        folder = testbed_weights_dir(name)
        if not (folder / "model_index.json").exists():
            arch = "dit" if name.endswith("-dit") else "unet"
            raise MelodiaError(f"the {name} weights are missing from {folder}; reinstall melodia or train them "
                               f"with python -m probing.testbed.train --arch {arch} --out {folder}")
        return folder
    if name in TINY_NAMES:
        from probing.models.tiny import tiny_pipeline_dir

        return tiny_pipeline_dir(name)
    return check_model_name(name)


def check_model_name(name: str) -> str:
    """`name` if it can be a model (built-in, a pipeline folder, or a hub id "owner/repo" that the hub or the
    local cache has); else one clear error: a missing local folder says so, an unknown bare name lists the
    built-in ones with the closest match, a hub id not cached while the hub is unreachable says how to get it.

    >>> check_model_name("testbd")
    Traceback (most recent call last):
    MelodiaError: unknown model 'testbd' (did you mean testbed?); built-in: testbed, testbed-dit, tiny-audioldm2, ...
    """
    path = Path(name)
    if name in BUILTIN_NAMES or path.is_dir():
        return name
    # a hub id is "owner/name" (names may hold dots: stable-audio-open-1.0); anything else with a path shape is local
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name
    if looks_local:
        raise MelodiaError(f"model folder {name} does not exist (give a diffusers pipeline folder, a hub id such as "
                           "cvssp/audioldm2-music, or a built-in name)")
    if "/" not in name:
        close = difflib.get_close_matches(name, BUILTIN_NAMES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise MelodiaError(f"unknown model {name!r}{hint}; built-in: {', '.join(BUILTIN_NAMES)}; or a pipeline folder, or "
                           "a hub id such as cvssp/audioldm2-music")
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "model_index.json"), str):
            raise MelodiaError(_not_here(name))
    return name


def _not_here(name: str) -> str:
    return (f"cannot load model '{name}': it is not in the local Hugging Face cache and the hub is unreachable. "
            f"Download it where you have a network (huggingface-cli download {name} --local-dir DIR) and pass "
            f"--model DIR, or use an offline model: {', '.join(BUILTIN_NAMES)}")


def load_model(name_or_path: str | DiffusionPipeline = DEFAULT_MODEL, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = None, name: str | None = None) -> DiffusionModel:
    """Open a model by name (testbed, tiny-*), local pipeline folder or Hugging Face id (float32 by default),
    or wrap a diffusers pipeline object already loaded (kept on its own device and dtype).

    >>> pipe = AudioLDM2Pipeline.from_pretrained("cvssp/audioldm2-music")
    >>> model = load_model(pipe)                      # the AudioLDM 2 adapter around the same object
    """
    if not isinstance(name_or_path, (str, Path)):
        return adapter_for(name_or_path, name)
    import torch

    source = _source_for(str(name_or_path))  # a bad name fails here, before torch loads anything
    if not Path(source).is_dir():
        hub_offline()  # asked before diffusers is imported: no retries against an unreachable hub
    _quiet_loading()
    pipeline = _load_pipeline(source, str(name_or_path), dtype or torch.float32)
    pipeline.set_progress_bar_config(disable=True)
    adapter = _adapter_for(type(pipeline).__name__, str(name_or_path))
    return adapter(pipeline.to(device), str(name_or_path))


def adapter_for(pipeline, name: str | None = None, generic: bool = False) -> DiffusionModel:
    """The melodia adapter around a diffusers pipeline object, chosen by its class or the nearest base
    class that has one (see ADAPTERS); with `generic=True`, an unknown class gets the generic adapter
    (tracing only, probing.models.generic).

    Raises:
        MelodiaError: the pipeline's class has no adapter (the supported classes are listed).
    """
    from diffusers import DiffusionPipeline

    if not isinstance(pipeline, DiffusionPipeline):
        raise MelodiaError(f"load_model takes a model name, a folder, a hub id or a diffusers pipeline, "
                           f"not a {type(pipeline).__name__}")
    label = name or getattr(pipeline, "name_or_path", None) or type(pipeline).__name__
    known = _registered_base(type(pipeline))
    if known is None and generic:
        from probing.models.generic import GenericModel

        return GenericModel(pipeline, label)
    return _adapter_for(known or type(pipeline).__name__, label)(pipeline, label)


__all__ = ["Conditioning", "DiffusionModel", "ADAPTERS", "adapter_for", "load_model", "check_model_name", "TINY_NAMES",
           "SHIPPED_NAMES", "DEFAULT_MODEL"]
