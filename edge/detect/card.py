"""Model cards: what an ONNX detector is, so nothing about a model is hard-coded.

A card names the model's family (which decides pre-processing and decoding), its input size
and its class names, plus provenance (version, licence, source, the file's sha256). It comes
from one of three places, first match wins:

1. ``<stem>.card.yaml`` beside the ONNX file;
2. ``<stem>.card.yaml`` in the models directory (the repository's ``models/`` by default);
3. the ONNX metadata that Ultralytics writes on export (``names``, ``imgsz``, ``stride``, ``task``).

A YAML card wins over metadata so an operator can correct a model without re-exporting it.
"""

from __future__ import annotations

import ast
import hashlib
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from curbwatch.schema.yamlio import ConfigError, load_yaml_model

logger = logging.getLogger(__name__)

# edge/detect/card.py -> repository root; the editable install keeps models/ there.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
CARD_SUFFIX = ".card.yaml"


class DetectorError(Exception):
    """Base of every error the detector raises; the camera loop catches this one."""


class ModelLoadError(DetectorError):
    """The model or its card could not be read: missing file, not ONNX, onnxruntime refused it."""


class ModelCardError(ModelLoadError):
    """A model card is malformed; the message lists each bad field with its file line."""


class UnsupportedModelError(DetectorError):
    """The model loads but is not one we can decode: unknown family, outputs or missing card."""


class ModelFamily(StrEnum):
    """Output conventions we can decode; each has a codec in ``families.py``."""

    ULTRALYTICS = "ultralytics"
    YOLOX = "yolox"


_Dim = Annotated[int, Field(gt=0, le=4096)]


class ModelCard(BaseModel):
    """Everything the detector needs to know about one ONNX model.

    Attributes:
        name: Short model name, shown in logs and evidence.
        version: Model version; goes with events so retraining knows which model saw what.
        family: Decoding convention.
        input_size_hw: Network input height and width in pixels.
        class_names: Class names in output order.
        strides: Feature-map strides of the detection head (YOLOX grid decoding uses them).
        sha256: Hex sha256 of the ONNX file; checked on load when given.
        licence: Licence of the weights.
        source: Where the model came from (URL, commit, training run).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, title="Name", description="Short model name, shown in logs and evidence.")
    version: str = Field(
        min_length=1,
        title="Version",
        description="Model version, reported with events for the retraining loop.",
    )
    family: ModelFamily = Field(
        title="Family", description="Output convention, which selects pre-processing and decoding."
    )
    input_size_hw: tuple[_Dim, _Dim] = Field(
        title="Input size (h, w)", description="Network input height and width in pixels."
    )
    class_names: tuple[str, ...] = Field(
        min_length=1, title="Class names", description="Class names in the order of the model's outputs."
    )
    strides: tuple[int, ...] = Field(
        default=(8, 16, 32),
        min_length=1,
        title="Strides",
        description="Feature-map strides of the detection head, smallest first.",
    )
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        title="sha256",
        description="Lower-case hex sha256 of the ONNX file; a mismatch on load is an error.",
    )
    licence: str | None = Field(default=None, title="Licence", description="Licence of the weights.")
    source: str | None = Field(
        default=None, title="Source", description="Where the model came from: URL, commit, training run."
    )

    @model_validator(mode="after")
    def verify_shape(self) -> ModelCard:
        if any(not name.strip() for name in self.class_names):
            raise ValueError("class_names must not contain empty names")
        duplicates = sorted({name for name in self.class_names if self.class_names.count(name) > 1})
        if duplicates:
            raise ValueError(f"class_names must be unique, repeated: {', '.join(duplicates)}")
        if any(s <= 0 for s in self.strides) or list(self.strides) != sorted(set(self.strides)):
            raise ValueError(f"strides must be positive and increasing, got {list(self.strides)}")
        largest = self.strides[-1]
        if any(dim % largest for dim in self.input_size_hw):
            raise ValueError(
                f"input_size_hw {list(self.input_size_hw)} must be multiples of the largest stride {largest}"
            )
        return self


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so large models do not sit in memory twice."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(path: Path | str) -> ModelCard:
    """Read and validate a card file.

    Raises:
        ModelCardError: The file is unreadable or a field is invalid (file:line: field: problem).
    """
    try:
        return load_yaml_model(ModelCard, path)
    except ConfigError as exc:
        raise ModelCardError(f"invalid model card {path}:\n{exc}") from exc


def card_candidates(model_path: Path, models_dir: Path | None) -> list[Path]:
    """Where a card for ``model_path`` may live, in priority order."""
    name = model_path.stem + CARD_SUFFIX
    places = [model_path.parent / name]
    directory = DEFAULT_MODELS_DIR if models_dir is None else models_dir
    if directory.resolve() != model_path.parent.resolve():
        places.append(directory / name)
    return places


def _literal(metadata: dict[str, str], key: str, source: str) -> Any:
    try:
        return ast.literal_eval(metadata[key])
    except (ValueError, SyntaxError) as exc:
        raise UnsupportedModelError(
            f"{source}: ONNX metadata '{key}' is not a Python literal: {metadata[key][:80]!r}"
        ) from exc


def card_from_metadata(metadata: dict[str, str], source: str) -> ModelCard | None:
    """Build a card from Ultralytics export metadata, or None when the metadata is not Ultralytics'.

    Raises:
        UnsupportedModelError: The metadata is Ultralytics' but not a detection model, or malformed.
    """
    if "names" not in metadata or "imgsz" not in metadata:
        return None
    task = metadata.get("task", "detect")
    if task != "detect":
        raise UnsupportedModelError(f"{source}: Ultralytics task is '{task}', expected 'detect'")
    names = _literal(metadata, "names", source)
    imgsz = _literal(metadata, "imgsz", source)
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
        raise UnsupportedModelError(f"{source}: metadata 'names' must map 0..N-1 to class names")
    stride = int(metadata.get("stride", "32"))
    fields = {
        "name": Path(source).stem,
        "version": metadata.get("version", "unknown"),
        "family": ModelFamily.ULTRALYTICS,
        "input_size_hw": tuple(imgsz) if isinstance(imgsz, list | tuple) else (imgsz, imgsz),
        "class_names": tuple(str(names[i]) for i in range(len(names))),
        "strides": tuple(s for s in (8, 16, 32, 64) if s <= stride),
        "licence": metadata.get("license"),
        "source": metadata.get("description"),
    }
    try:
        return ModelCard.model_validate(fields)
    except ValidationError as exc:
        raise UnsupportedModelError(
            f"{source}: Ultralytics metadata does not make a valid card: {exc}"
        ) from exc


def resolve_card(model_path: Path, models_dir: Path | None, metadata: dict[str, str]) -> ModelCard:
    """Find the card for a model and bind it to the file's actual sha256.

    Raises:
        ModelCardError: A card file exists but is invalid, or its sha256 names another file.
        UnsupportedModelError: No card file and no usable ONNX metadata.
    """
    actual = file_sha256(model_path)
    candidates = card_candidates(model_path, models_dir)
    found = next((place for place in candidates if place.is_file()), None)
    if found is not None:
        card = load_card(found)
        if card.sha256 is not None and card.sha256 != actual:
            raise ModelCardError(
                f"model card {found} is for sha256 {card.sha256}, but {model_path} has sha256 {actual}"
            )
        logger.info("model %s: card %s", model_path, found)
    else:
        card = card_from_metadata(metadata, str(model_path))
        if card is None:
            tried = ", ".join(str(place) for place in candidates)
            raise UnsupportedModelError(
                f"{model_path}: no model card found (looked for {tried}) and the ONNX metadata has no "
                f"Ultralytics 'names'/'imgsz' (found keys: {sorted(metadata) or 'none'})"
            )
        logger.info("model %s: card from ONNX metadata", model_path)
    return card.model_copy(update={"sha256": actual})
