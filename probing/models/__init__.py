"""Model adapters and `load_model`, the one way melodia opens a diffusion model.

Examples:
    >>> model = load_model("tiny-audioldm2")          # offline, random weights
    >>> model.family
    'audioldm2'
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from probing.errors import MelodiaError
from probing.models.audioldm2 import AudioLDM2Model
from probing.models.base import Conditioning, DiffusionModel
from probing.models.stable_audio import StableAudioModel
from probing.models.testbed import TestbedModel
from probing.models.unet import UNetModel

FAMILIES: dict[str, type[DiffusionModel]] = {"testbed": TestbedModel, "audioldm2": AudioLDM2Model,
                                             "stable-audio": StableAudioModel, "unet": UNetModel}
# The flow-matching families, imported on first use: pipeline class -> "module:adapter class".
FLOW_FAMILIES = {"AceStepPipeline": "probing.models.ace_step:AceStepModel",
                 "StableAudio3Pipeline": "probing.models.stable_audio_3:StableAudio3Model",
                 "LongCatAudioDiTPipeline": "probing.models.longcat:LongCatModel",
                 "TestbedDiTPipeline": "probing.models.testbed_dit:TestbedDiTModel"}
DEFAULT_MODEL = "testbed"
TINY_NAMES = ("tiny-audioldm2", "tiny-stable-audio", "tiny-unet", "tiny-ace-step", "tiny-stable-audio-3",
              "tiny-longcat")


def _adapter_for(class_name: str, name: str) -> type[DiffusionModel]:
    for adapter in FAMILIES.values():
        if class_name in adapter.pipeline_classes:
            return adapter
    if class_name in FLOW_FAMILIES:
        module, adapter = FLOW_FAMILIES[class_name].split(":")
        return getattr(importlib.import_module(module), adapter)
    supported = sorted([c for a in FAMILIES.values() for c in a.pipeline_classes] + list(FLOW_FAMILIES))
    raise MelodiaError(f"{name}: pipeline class {class_name} is not supported (supported: {', '.join(supported)})")


def _quiet_loading() -> None:
    """No per-component loading bars from diffusers/transformers: melodia shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _load_pipeline(source: str | Path, name: str, dtype: torch.dtype):
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
        return DiffusionPipeline.from_pretrained(str(source), dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise MelodiaError(
            f"cannot load model '{name}' ({type(error).__name__}): it is not in the local Hugging Face cache and "
            "the hub is unreachable. Download it where you have a network (huggingface-cli download "
            f"{name} --local-dir DIR) and pass --model DIR, or use an offline model: testbed, testbed-dit, "
            + ", ".join(TINY_NAMES)) from None


def _source_for(name: str) -> Path | str:
    if name in ("testbed", "testbed-dit"):
        from probing.testbed.build import testbed_weights_dir
        from probing.testbed.dit import testbed_dit_weights_dir

        folder = testbed_weights_dir() if name == "testbed" else testbed_dit_weights_dir()
        if not (folder / "model_index.json").exists():
            arch = "unet" if name == "testbed" else "dit"
            raise MelodiaError(f"the {name} weights are missing from {folder}; reinstall melodia or train them "
                               f"with python -m probing.testbed.train --arch {arch} --out {folder}")
        return folder
    if name in TINY_NAMES:
        from probing.models.tiny import tiny_pipeline_dir

        return tiny_pipeline_dir(name)
    return name


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | torch.device = "cpu",
               dtype: torch.dtype = torch.float32) -> DiffusionModel:
    """Open a model by name (testbed, tiny-*), local pipeline folder or Hugging Face id."""
    _quiet_loading()
    pipeline = _load_pipeline(_source_for(str(name_or_path)), str(name_or_path), dtype)
    pipeline.set_progress_bar_config(disable=True)
    adapter = _adapter_for(type(pipeline).__name__, str(name_or_path))
    return adapter(pipeline.to(device), str(name_or_path))


__all__ = ["Conditioning", "DiffusionModel", "FAMILIES", "load_model", "TINY_NAMES", "DEFAULT_MODEL"]
