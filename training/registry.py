"""The model registry: one YAML card per model version under ``models/registry/<name>/<version>.yaml``.

A registry card says what a model is (family, input size, classes: everything the edge's model card
holds), where its files are and their sha256 (the ONNX for the edge, the PyTorch weights to fine-tune,
the INT8 variant), what it learned from (the dataset card's sha256), what it was trained from (the
parent model), how good it is (mAP per class, measured through the edge's detector) and what INT8
quantization costs and gains. Binaries stay out of git (``build/models`` by default) unless tiny; the
card records where they are, relative to the repository.

Registry cards live apart from the edge's ``<stem>.card.yaml`` model cards (``edge/detect/card.py``),
whose strict schema the edge loads by file stem; :meth:`RegistryEntry.edge_card` gives the edge card
of an entry, and plain edge cards in ``models/`` are listed too, as entries without registry data.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from curbwatch.edge.detect.card import (
    CARD_SUFFIX,
    ModelCard,
    ModelCardError,
    ModelFamily,
    file_sha256,
    load_card,
)
from curbwatch.schema.yamlio import ConfigError, load_yaml_model
from curbwatch.training.evaluate import DetectionMetrics

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REGISTRY = REPO_ROOT / "models"
ENTRIES_DIR = "registry"
REGISTRY_SCHEMA = "curbwatch.model.v1"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class RegistryError(Exception):
    """A registry card is missing, invalid or in the way; the message names it."""


class _Card(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileRef(_Card):
    """A model file: where it is (relative to the registry's parent folder, or absolute) and its hash."""

    path: str
    sha256: Sha256
    size_bytes: int = Field(ge=0)


class ParentModel(_Card):
    """The model this one was trained from."""

    ref: str = Field(description="name@version in the registry, a weights path, or an architecture yaml.")
    sha256: Sha256 | None = None


class TrainingData(_Card):
    """The dataset the model learned from."""

    card: str | None = Field(default=None, description="Path of dataset_card.json.")
    sha256: Sha256 | None = Field(default=None, description="sha256 of dataset_card.json.")
    name: str | None = None


class TrainingRun(_Card):
    run_dir: str
    epochs: int
    imgsz: int
    seed: int
    device: str


class SpeedRow(_Card):
    """Median ``session.run`` time of FP32 and INT8 on the same inputs, at one thread count."""

    threads: int
    fp32_ms: float
    int8_ms: float
    speedup: float


class Quantization(_Card):
    """The INT8 variant and what it costs and gains against FP32."""

    file: FileRef
    method: str = Field(description="How it was quantized (onnxruntime static, format, types, calibration).")
    calibration_images: int
    excluded_nodes: int = Field(description="Detect-head decoding nodes kept in float.")
    speed: list[SpeedRow]
    speed_images: int = Field(description="Distinct inputs the timings cycled over.")
    runs: int = Field(
        description="session.run calls timed per model and thread count (the models alternate)."
    )
    load_average: float | None = Field(
        default=None, description="1-minute load average as timing began: other processes share the cores."
    )
    accuracy_images: int
    map50_fp32: float
    map50_int8: float
    map50_delta_points: float = Field(description="(INT8 - FP32) mAP50 in percentage points.")


class Evaluation(_Card):
    """The promotion decision recorded by ``curbwatch train eval``."""

    report: str
    promoted: bool
    baseline: str | None = None


class RegistryEntry(_Card):
    """One model version."""

    schema_: Literal["curbwatch.model.v1"] = Field(default=REGISTRY_SCHEMA, alias="schema")
    name: Name
    version: Name
    created_at: datetime
    family: ModelFamily
    input_size_hw: tuple[int, int]
    class_names: list[str]
    strides: list[int] = Field(default_factory=lambda: [8, 16, 32])
    file: FileRef = Field(description="The FP32 ONNX model the edge loads.")
    weights: FileRef | None = Field(default=None, description="PyTorch weights, to fine-tune from.")
    parent: ParentModel | None = None
    dataset: TrainingData | None = None
    training: TrainingRun | None = None
    metrics: DetectionMetrics | None = None
    evaluation: Evaluation | None = None
    quantization: Quantization | None = None
    licence: str | None = None
    source: str | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def edge_card(self) -> ModelCard:
        """The edge's model card for the FP32 file."""
        return ModelCard(
            name=self.name,
            version=self.version,
            family=self.family,
            input_size_hw=self.input_size_hw,
            class_names=tuple(self.class_names),
            strides=tuple(self.strides),
            sha256=self.file.sha256,
            licence=self.licence,
            source=self.source,
        )


class Listed(_Card):
    """A row of ``curbwatch models list``: a registry entry, or a plain edge card in ``models/``."""

    ref: str
    card_path: str
    entry: RegistryEntry | None = None
    card: ModelCard | None = None


def dump_card_yaml(data: dict) -> str:
    """Block-style YAML, one field per line, long values unbroken (cards are read and diffed by people)."""
    import io

    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.width = 4096
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name@version`` -> (name, version); ``name`` -> (name, None)."""
    name, at, version = ref.partition("@")
    if not re.fullmatch(NAME_PATTERN, name) or (at and not re.fullmatch(NAME_PATTERN, version)):
        raise RegistryError(f"{ref!r} is not NAME or NAME@VERSION (letters, digits, '.', '_', '-')")
    return name, version or None


class Registry:
    """Registry cards under ``root/registry``; file paths in them are relative to ``root.parent``.

    Args:
        root: The models folder (the repository's ``models/`` by default).
    """

    def __init__(self, root: Path = DEFAULT_REGISTRY) -> None:
        self.root = root
        self.base = root.resolve().parent

    def entry_path(self, name: str, version: str) -> Path:
        return self.root / ENTRIES_DIR / name / f"{version}.yaml"

    def relative(self, path: Path | str) -> str:
        """``path`` relative to the registry's parent folder when inside it, else absolute."""
        resolved = Path(path).resolve()
        return str(resolved.relative_to(self.base) if resolved.is_relative_to(self.base) else resolved)

    def file_ref(self, path: Path) -> FileRef:
        """A reference to ``path`` (see :meth:`relative`) with its sha256 and size."""
        return FileRef(path=self.relative(path), sha256=file_sha256(path), size_bytes=path.stat().st_size)

    def resolve(self, ref: FileRef) -> Path:
        """Where a referenced file is on this machine."""
        path = Path(ref.path)
        return path if path.is_absolute() else self.base / path

    def verify(self, ref: FileRef) -> str | None:
        """None when the file is there with its sha256, else what is wrong."""
        path = self.resolve(ref)
        if not path.is_file():
            return f"missing: {path}"
        actual = file_sha256(path)
        return None if actual == ref.sha256 else f"sha256 mismatch: {path} has {actual}"

    def entries(self) -> list[RegistryEntry]:
        """Every registry card, by name then creation time.

        Raises:
            RegistryError: A card is invalid (file, line and field named).
        """
        found = []
        for path in sorted((self.root / ENTRIES_DIR).glob("*/*.yaml")):
            found.append(self._load(path))
        return sorted(found, key=lambda entry: (entry.name, entry.created_at, entry.version))

    def _load(self, path: Path) -> RegistryEntry:
        try:
            entry = load_yaml_model(RegistryEntry, path)
        except ConfigError as exc:
            raise RegistryError(f"invalid registry card {path}:\n{exc}") from exc
        if path != self.entry_path(entry.name, entry.version):
            raise RegistryError(
                f"{path} holds {entry.ref}; it belongs at {self.entry_path(entry.name, entry.version)}"
            )
        return entry

    def listing(self) -> list[Listed]:
        """Registry entries and the plain edge cards (``models/*.card.yaml``) beside them."""
        rows = [
            Listed(ref=entry.ref, card_path=str(self.entry_path(entry.name, entry.version)), entry=entry)
            for entry in self.entries()
        ]
        for path in sorted(self.root.glob(f"*{CARD_SUFFIX}")):
            try:
                card = load_card(path)
            except ModelCardError as exc:
                raise RegistryError(str(exc)) from exc
            rows.append(Listed(ref=f"{card.name}@{card.version}", card_path=str(path), card=card))
        return rows

    def get(self, ref: str) -> RegistryEntry:
        """The entry ``name@version``, or the newest version of ``name``.

        Raises:
            RegistryError: Unknown name or version (the known ones are listed).
        """
        name, version = parse_ref(ref)
        if version is not None:
            path = self.entry_path(name, version)
            if path.is_file():
                return self._load(path)
        versions = [entry for entry in self.entries() if entry.name == name]
        if version is None and versions:
            return versions[-1]
        known = ", ".join(entry.ref for entry in versions) or "none"
        raise RegistryError(f"no model {ref} in {self.root / ENTRIES_DIR} (versions of {name}: {known})")

    def find_sha256(self, sha256: str) -> RegistryEntry | None:
        """The entry whose ONNX, weights or INT8 file has this sha256."""
        for entry in self.entries():
            refs = [entry.file, entry.weights, entry.quantization.file if entry.quantization else None]
            if any(ref is not None and ref.sha256 == sha256 for ref in refs):
                return entry
        return None

    def add(self, entry: RegistryEntry, *, replace: bool = False) -> Path:
        """Write ``entry``'s card; an existing version is replaced only when asked.

        Raises:
            RegistryError: The version exists (and ``replace`` is False).
        """
        path = self.entry_path(entry.name, entry.version)
        if path.exists() and not replace:
            raise RegistryError(f"{entry.ref} is already registered ({path}); choose a new --version")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = entry.model_dump(mode="json", by_alias=True, exclude_none=True)
        header = f"# Registry card of {entry.ref}; see models/README.md.\n"
        path.write_text(header + dump_card_yaml(data), encoding="utf-8")
        return path


def resolve_model_path(
    ref: str | Path, registry: Registry, *, want: Literal["onnx", "weights", "int8"] = "onnx"
) -> Path:
    """A model path given as a file or as a registry reference (``name`` or ``name@version``).

    Raises:
        RegistryError: Neither an existing file nor a registered model with that kind of file.
    """
    path = Path(ref)
    if path.exists() or path.suffix in (".onnx", ".pt") or "/" in str(ref):
        return path
    entry = registry.get(str(ref))
    chosen = {
        "onnx": entry.file,
        "weights": entry.weights,
        "int8": entry.quantization.file if entry.quantization else None,
    }[want]
    if chosen is None:
        raise RegistryError(f"{entry.ref} has no {want} file")
    return registry.resolve(chosen)


def class_names_of(ref: str | Path, registry: Registry) -> tuple[str, ...]:
    """Class names of a model card (``.card.yaml``), an ONNX model, or a registry reference.

    Raises:
        RegistryError: The reference cannot be read.
    """
    path = Path(ref)
    if path.name.endswith(CARD_SUFFIX):
        try:
            return load_card(path).class_names
        except ModelCardError as exc:
            raise RegistryError(str(exc)) from exc
    if path.suffix == ".onnx":
        from curbwatch.edge.detect.onnx import DetectorConfig, DetectorError, OnnxDetector

        try:
            return OnnxDetector(DetectorConfig(model_path=path)).class_names
        except DetectorError as exc:
            raise RegistryError(str(exc)) from exc
    return tuple(registry.get(str(ref)).class_names)
