"""The demo edge box's config and its cache of rendered streets (``curbwatch.edge.demo``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from curbwatch.edge.demo import (
    DEMO_DEVICE,
    DEMO_SEEDS,
    demo_edge_config,
    demo_model_path,
    demo_street,
    render_demo_streets,
    render_stamp,
)
from curbwatch.training.registry import RegistryError


def test_streets_with_a_current_stamp_are_not_rendered_again(tmp_path: Path) -> None:
    for seed in DEMO_SEEDS:
        street = demo_street(tmp_path, seed)
        street.video.write_bytes(b"rendered before")
        street.video.with_suffix(".stamp").write_text(render_stamp(seed), encoding="utf-8")
    streets = render_demo_streets(tmp_path, progress=False)
    assert [s.camera_id for s in streets] == [f"street-{seed}" for seed in DEMO_SEEDS]
    assert all(s.video.read_bytes() == b"rendered before" for s in streets)


def test_the_stamp_changes_with_the_seed() -> None:
    assert render_stamp(1) != render_stamp(2)
    assert render_stamp(1) == render_stamp(1)


def test_one_device_watches_every_street_with_its_own_zone_file(tmp_path: Path) -> None:
    model = tmp_path / "detector.onnx"
    model.write_bytes(b"onnx")
    streets = [demo_street(tmp_path / "streets", seed) for seed in DEMO_SEEDS]
    config = demo_edge_config(
        tmp_path, streets, start_time="2026-11-27T09:00:00+08:00", realtime=True, model=model
    )
    assert config.device_id == DEMO_DEVICE
    assert config.detector.model_path == model
    assert [(c.id, c.zones, c.source.url) for c in config.cameras] == [
        (s.camera_id, s.zones, str(s.video)) for s in streets
    ]
    assert all(c.source.realtime for c in config.cameras)
    assert config.delivery is None


def test_a_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="missing"):
        demo_model_path(tmp_path / "gone.onnx")
