"""The model registry and ``curbwatch models list|show``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.edge.detect.card import load_card
from curbwatch.training.registry import (
    ParentModel,
    Registry,
    RegistryEntry,
    RegistryError,
    class_names_of,
    parse_ref,
    resolve_model_path,
)
from tests.training.fake_models import constant_detector

T0 = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
EDGE_CARD = "name: plain\nversion: '7'\nfamily: yolox\ninput_size_hw: [64, 64]\nclass_names: [car]\n"


def entry(registry: Registry, version: str, created: datetime, **overrides: object) -> RegistryEntry:
    folder = registry.base / "build" / "models" / "street" / version
    onnx = constant_detector(folder / "street.onnx", ("car", "person"), [(0, 32.0, 32.0, 20.0, 20.0, 0.9)])
    weights = folder / "street.pt"
    weights.write_bytes(f"weights {version}".encode())
    fields = {
        "name": "street",
        "version": version,
        "created_at": created,
        "family": "ultralytics",
        "input_size_hw": (64, 64),
        "class_names": ["car", "person"],
        "file": registry.file_ref(onnx),
        "weights": registry.file_ref(weights),
        **overrides,
    }
    return RegistryEntry.model_validate(fields)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    (tmp_path / "models").mkdir()
    return Registry(tmp_path / "models")


def test_add_get_and_list(registry: Registry) -> None:
    first = entry(registry, "1", T0)
    second = entry(
        registry, "2", T0 + timedelta(days=1), parent=ParentModel(ref="street@1", sha256=first.weights.sha256)
    )
    path = registry.add(first)
    registry.add(second)
    assert path == registry.root / "registry" / "street" / "1.yaml"
    assert path.read_text().startswith("# Registry card of street@1")
    assert "file:\n  path: build/models/street/1/street.onnx\n" in path.read_text()  # relative, block style
    assert registry.get("street@1") == first
    assert registry.get("street") == second  # newest
    assert registry.find_sha256(first.weights.sha256) == first
    assert registry.resolve(first.file) == registry.base / "build/models/street/1/street.onnx"
    (registry.root / "plain.card.yaml").write_text(EDGE_CARD)
    rows = registry.listing()
    assert [row.ref for row in rows] == ["street@1", "street@2", "plain@7"]
    assert rows[2].entry is None and rows[2].card is not None and rows[2].card.name == "plain"


def test_registry_refuses_duplicates_and_unknown_refs(registry: Registry) -> None:
    registry.add(entry(registry, "1", T0))
    with pytest.raises(RegistryError, match="street@1 is already registered"):
        registry.add(entry(registry, "1", T0))
    registry.add(entry(registry, "1", T0 + timedelta(hours=1)), replace=True)
    with pytest.raises(RegistryError, match=r"no model street@9 .*versions of street: street@1"):
        registry.get("street@9")
    with pytest.raises(RegistryError, match=r"versions of other: none"):
        registry.get("other")
    for bad in ("street@", "../x", "a b@1", "x@1/2"):
        with pytest.raises(RegistryError, match="is not NAME or NAME@VERSION"):
            parse_ref(bad)


def test_invalid_or_misplaced_cards_are_named(registry: Registry) -> None:
    path = registry.add(entry(registry, "1", T0))
    path.write_text(path.read_text().replace("family: ultralytics", "family: detr"))
    with pytest.raises(RegistryError, match=r"invalid registry card .*1\.yaml:\n.*1\.yaml:\d+:\d+: family"):
        registry.entries()
    path.write_text(path.read_text().replace("family: detr", "family: ultralytics"))
    path.rename(path.with_name("3.yaml"))
    with pytest.raises(RegistryError, match=r"3\.yaml holds street@1; it belongs at .*street/1\.yaml"):
        registry.entries()


def test_edge_card_and_file_checks(registry: Registry) -> None:
    item = entry(registry, "1", T0)
    registry.add(item)
    card = item.edge_card()
    assert (card.name, card.version, card.sha256, card.class_names) == (
        "street",
        "1",
        item.file.sha256,
        ("car", "person"),
    )
    assert registry.verify(item.file) is None
    onnx = registry.resolve(item.file)
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    assert "sha256 mismatch" in (registry.verify(item.file) or "")
    onnx.unlink()
    assert (registry.verify(item.file) or "").startswith("missing: ")


def test_model_references(registry: Registry, tmp_path: Path) -> None:
    item = entry(registry, "1", T0)
    registry.add(item)
    assert resolve_model_path("street@1", registry) == registry.resolve(item.file)
    assert resolve_model_path("street", registry, want="weights") == registry.resolve(item.weights)
    with pytest.raises(RegistryError, match="street@1 has no int8 file"):
        resolve_model_path("street@1", registry, want="int8")
    assert resolve_model_path(str(tmp_path / "x.onnx"), registry) == tmp_path / "x.onnx"
    assert class_names_of("street", registry) == ("car", "person")
    assert class_names_of(registry.resolve(item.file), registry) == ("car", "person")
    (tmp_path / "plain.card.yaml").write_text(EDGE_CARD)
    assert (
        class_names_of(tmp_path / "plain.card.yaml", registry)
        == load_card(tmp_path / "plain.card.yaml").class_names
    )


def test_models_commands(registry: Registry) -> None:
    runner = CliRunner()
    empty = runner.invoke(app, ["models", "list", "--registry", str(registry.root)])
    assert empty.exit_code == 0 and "no models" in empty.stdout
    item = entry(registry, "1", T0)
    registry.add(item)
    (registry.root / "plain.card.yaml").write_text(EDGE_CARD)
    listed = runner.invoke(app, ["models", "list", "--registry", str(registry.root)])
    assert listed.exit_code == 0, listed.output
    header, first, second = listed.stdout.splitlines()
    assert header.split()[:4] == ["MODEL", "FAMILY", "INPUT", "CLASSES"]
    assert first.split()[:6] == ["street@1", "ultralytics", "64x64", "2", "-", "-"]
    assert second.split()[:4] == ["plain@7", "yolox", "64x64", "1"]
    shown = runner.invoke(app, ["models", "show", "street", "--registry", str(registry.root)])
    assert shown.exit_code == 0 and "name: street" in shown.stdout and "# onnx: " in shown.stdout
    assert shown.stdout.count(": ok") == 2
    registry.resolve(item.weights).unlink()
    broken = runner.invoke(app, ["models", "show", "street@1", "--registry", str(registry.root)])
    assert broken.exit_code == 1 and "weights missing" in broken.stderr
    unknown = runner.invoke(app, ["models", "show", "nope", "--registry", str(registry.root)])
    assert unknown.exit_code == 1 and "no model nope" in unknown.stderr


def test_every_training_command_has_help_with_examples() -> None:
    for command in (["train", name] for name in ("dataset", "run", "eval", "export", "quantize")):
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Example" in result.stdout, command
    for command in (["models", "list"], ["models", "show"]):
        result = CliRunner().invoke(app, [*command, "--help"])
        assert result.exit_code == 0 and "Example" in result.stdout, command
