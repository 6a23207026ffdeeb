"""Benchmark manifests (datasets/editing/*.yaml): edit items, each a source, a target prompt and maybe an ideal.

A source is either synthesized (a score seed rendered with an instrument, style and mood: the
testbed, where the ideal edit is the same score rendered with the target attributes) or an audio
file under a user-supplied data folder, with an optional sha256. Format: datasets/editing/README.md.

Examples:
    >>> manifest = load_manifest("testbed")               # a shipped name, or the path of a .yaml
    >>> item = manifest.items[0]; item.id, item.category, item.target_prompt
    >>> source, ideal = manifest.source_audio(item, 16000), manifest.ideal_audio(item, 16000)
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np
import yaml

from probing.errors import MelodiaError
from probing.paths import datasets_dir

CATEGORIES = {"timbre": "instrument", "style": "style", "mood": "mood"}  # category -> the attribute it changes
SYNTH_KEYS = ("instrument", "style", "mood", "score_seed")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SynthClip:
    """A score (`score_seed`, a tune in `form`) rendered by the synthesizer with an instrument, style and mood."""

    instrument: str
    style: str
    mood: str
    score_seed: int
    form: str = "walk"

    def render(self, sample_rate: int) -> np.ndarray:
        from probing.synth import render_clip

        return render_clip(self.instrument, self.style, self.mood, self.score_seed, sr=sample_rate, form=self.form)


@dataclass(frozen=True)
class AudioFile:
    """An audio file, relative to the data folder; `sha256` None when its checksum is not known."""

    file: str
    sha256: str | None = None


@dataclass(frozen=True)
class EditItem:
    """One edit task: change `source` towards `target_prompt`; `ideal` is the ground truth where one exists."""

    id: str
    category: str
    target_prompt: str
    source: SynthClip | AudioFile
    ideal: SynthClip | None = None


@dataclass(frozen=True)
class Manifest:
    """A benchmark: its items in file order, and for file sources where to get them (`download`)."""

    name: str
    path: Path
    items: tuple[EditItem, ...]
    description: str = ""
    download: str = ""
    clip_seconds: float | None = None

    def select(self, categories: Sequence[str] | None = None, limit: int | None = None) -> list[EditItem]:
        """The items of `categories` (default all), the first `limit` of them (default all), in file order."""
        unknown = set(categories or ()) - set(CATEGORIES)
        if unknown:
            raise MelodiaError(f"unknown category {', '.join(sorted(unknown))}; choose from {', '.join(CATEGORIES)}")
        chosen = [item for item in self.items if not categories or item.category in categories]
        if not chosen:
            raise MelodiaError(f"{self.name}: no items of category {', '.join(categories)}")
        return chosen[:limit]

    def check_files(self, items: Sequence[EditItem], data_dir: str | Path | None) -> Path | None:
        """Check that every file source of `items` is under `data_dir` with its checksum; the folder, resolved."""
        files = [item.source for item in items if isinstance(item.source, AudioFile)]
        if not files:
            return None
        if data_dir is None or not Path(data_dir).is_dir():
            given = "no --data-dir given" if data_dir is None else f"data folder {data_dir} does not exist"
            raise MelodiaError(f"{self.name}: {given}; {self.download}")
        folder = Path(data_dir).resolve()
        for source in files:
            path = folder / source.file
            if not path.is_file():
                raise MelodiaError(f"{self.name}: {source.file} is missing under {folder}; {self.download}")
            if source.sha256 is not None and _sha256(path) != source.sha256:
                raise MelodiaError(f"{self.name}: {path} does not match the manifest's sha256 (a different or "
                                   "damaged file); download it again")
        return folder

    def source_audio(self, item: EditItem, sample_rate: int, data_dir: Path | None = None) -> np.ndarray:
        """The item's source, mono at `sample_rate` (a file source cut to the manifest's clip_seconds)."""
        if isinstance(item.source, SynthClip):
            return item.source.render(sample_rate)
        from editing.audio import load_audio

        wave = load_audio(Path(data_dir or ".") / item.source.file, sample_rate)
        return wave if self.clip_seconds is None else wave[: round(self.clip_seconds * sample_rate)]

    def ideal_audio(self, item: EditItem, sample_rate: int) -> np.ndarray | None:
        """The ground-truth edit at `sample_rate`, or None where the manifest has none."""
        return None if item.ideal is None else item.ideal.render(sample_rate)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(name_or_path: str | Path) -> Path:
    """A manifest file: the path as given, else a shipped one by name (`testbed` -> datasets/editing/testbed.yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = datasets_dir() / "editing" / f"{path.stem}.yaml"
    if path.suffix in ("", ".yaml") and path.parent == Path(".") and shipped.is_file():
        return shipped
    names = ", ".join(sorted(p.stem for p in (datasets_dir() / "editing").glob("*.yaml")))
    raise MelodiaError(f"benchmark manifest {name_or_path} does not exist (shipped: {names})")


def load_manifest(name_or_path: str | Path) -> Manifest:
    """Read and validate a manifest; a bad one raises a one-line MelodiaError naming the file and the item."""
    path = manifest_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise MelodiaError(f"{path}: not valid YAML ({type(error).__name__})") from None
    where = str(path)
    raw = _mapping(raw, where, required=("name", "items"),
                   optional=("description", "download", "clip_seconds"))
    name = str(raw["name"])
    if not isinstance(raw["items"], list):
        raise MelodiaError(f"{where}: 'items' must be a list of edit items")
    items = tuple(_item(entry, f"{where}: item {i + 1}") for i, entry in enumerate(raw["items"]))
    download = str(raw.get("download") or "")
    if not items:
        raise MelodiaError(f"{where}: {name} lists no items yet" + (f"; {download}" if download else ""))
    _check_unique(items, where)
    if any(isinstance(item.source, AudioFile) for item in items) and not download:
        raise MelodiaError(f"{where}: file sources need 'download': what to get and where to put it")
    clip = raw.get("clip_seconds")
    if clip is not None and (not isinstance(clip, (int, float)) or clip <= 0):
        raise MelodiaError(f"{where}: clip_seconds must be a positive number of seconds or null, got {clip!r}")
    return Manifest(name, path, items, str(raw.get("description") or ""), download,
                    None if clip is None else float(clip))


def _mapping(raw, where: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    """`raw` as a dict holding every required key and no unknown key."""
    if not isinstance(raw, dict):
        raise MelodiaError(f"{where}: expected a mapping with {', '.join(required)}")
    missing = [key for key in required if raw.get(key) is None]
    unknown = sorted(set(raw) - set(required) - set(optional))
    if missing or unknown:
        problem = f"missing {', '.join(missing)}" if missing else f"unknown key {', '.join(map(str, unknown))}"
        raise MelodiaError(f"{where}: {problem} (keys: {', '.join(required)}"
                           + (f"; optional: {', '.join(optional)})" if optional else ")"))
    return raw


def _item(raw, where: str) -> EditItem:
    raw = _mapping(raw, where, required=("id", "category", "target_prompt", "source"), optional=("ideal",))
    where = f"{where} ({raw['id']})"
    if raw["category"] not in CATEGORIES:
        raise MelodiaError(f"{where}: category {raw['category']!r} is not one of {', '.join(CATEGORIES)}")
    prompt = str(raw["target_prompt"])
    if not prompt.strip() or "\n" in prompt:
        raise MelodiaError(f"{where}: target_prompt must be one non-empty line")
    source = _source(raw["source"], f"{where}: source")
    form = source.form if isinstance(source, SynthClip) else "walk"  # an ideal plays its source's tune
    ideal = None if raw.get("ideal") is None else _synth(raw["ideal"], f"{where}: ideal", form)
    return EditItem(str(raw["id"]), raw["category"], prompt, source, ideal)


def _source(raw, where: str) -> SynthClip | AudioFile:
    if isinstance(raw, dict) and "file" in raw:
        raw = _mapping(raw, where, required=("file",), optional=("sha256",))
        file = PurePosixPath(str(raw["file"]))
        if file.is_absolute() or ".." in file.parts:
            raise MelodiaError(f"{where}: file {file} must be relative to the data folder, without '..'")
        checksum = raw.get("sha256")
        if checksum is not None and not _SHA256.fullmatch(str(checksum)):
            raise MelodiaError(f"{where}: sha256 must be 64 lower-case hex digits or null, got {checksum!r}")
        return AudioFile(str(file), checksum)
    return _synth(raw, where)


def _synth(raw, where: str, default_form: str = "walk") -> SynthClip:
    from probing.synth.classes import check_class
    from probing.synth.score import check_form

    raw = _mapping(raw, where, required=SYNTH_KEYS, optional=("form",))
    form = raw.get("form") or default_form
    try:
        for attribute in ("instrument", "style", "mood"):
            check_class(attribute, raw[attribute])
        check_form(form)
    except ValueError as error:
        raise MelodiaError(f"{where}: {error}") from None
    if not isinstance(raw["score_seed"], int):
        raise MelodiaError(f"{where}: score_seed must be an integer, got {raw['score_seed']!r}")
    return SynthClip(raw["instrument"], raw["style"], raw["mood"], raw["score_seed"], form)


def _check_unique(items: Sequence[EditItem], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item.id in seen:
            raise MelodiaError(f"{where}: item id {item.id!r} appears twice; ids must be unique")
        seen.add(item.id)
