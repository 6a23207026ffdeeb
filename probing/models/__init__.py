"""Model adapters and `load_model`, the one way melodia opens a diffusion model.

Examples:
    >>> model = load_model("tiny-audioldm2")          # offline, random weights
    >>> model.family
    'audioldm2'
"""
from __future__ import annotations

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
DEFAULT_MODEL = "testbed"
TINY_NAMES = ("tiny-audioldm2", "tiny-stable-audio", "tiny-unet")


def _adapter_for(class_name: str, name: str) -> type[DiffusionModel]:
    for adapter in FAMILIES.values():
        if class_name in adapter.pipeline_classes:
            return adapter
    supported = sorted(c for a in FAMILIES.values() for c in a.pipeline_classes)
    raise MelodiaError(f"{name}: pipeline class {class_name} is not supported (supported: {', '.join(supported)})")


def _quiet_loading() -> None:
    """No per-component loading bars from diffusers/transformers: melodia shows its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def _load_pipeline(source: str | Path, name: str, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    from probing.testbed.pipeline import TestbedPipeline

    folder = Path(source)
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.exists():
            raise MelodiaError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
        class_name = json.loads(index.read_text())["_class_name"]
        pipeline_class = TestbedPipeline if class_name == "TestbedPipeline" else DiffusionPipeline
        return pipeline_class.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    try:
        return DiffusionPipeline.from_pretrained(str(source), dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as error:
        raise MelodiaError(
            f"cannot load model '{name}' ({type(error).__name__}): it is not in the local Hugging Face cache and "
            "the hub is unreachable. Download it where you have a network (huggingface-cli download "
            f"{name} --local-dir DIR) and pass --model DIR, or use an offline model: testbed, "
            + ", ".join(TINY_NAMES)) from None


def _source_for(name: str) -> Path | str:
    if name == "testbed":
        from probing.testbed.build import testbed_weights_dir

        folder = testbed_weights_dir()
        if not (folder / "model_index.json").exists():
            raise MelodiaError(f"the testbed weights are missing from {folder}; reinstall melodia or train them "
                               "with python -m probing.testbed.train --out " + str(folder))
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
