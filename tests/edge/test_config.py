"""Edge configuration: validation with lines, relative paths, frozen result."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from curbwatch.edge.config import load_edge_config
from curbwatch.schema.yamlio import ConfigError

VALID = """\
version: 1
device_id: box-1
detector: {model_path: models/m.onnx, class_thresholds: {person: 0.5}}
evidence: {root: evidence}
output: {events: out/events.jsonl, detlog_dir: logs}
cameras:
  - id: cam-1
    source: {url: videos/a.mp4, fps: 5}
    zones: zones/cam-1.yaml
  - id: cam-2
    source: {url: "rtsp://u:p@192.0.2.1/s"}
    zones: /etc/curbwatch/cam-2.yaml
  - id: cam-3
    source: {url: "stills:snaps"}
    zones: zones/cam-3.yaml
"""


def test_relative_paths_are_taken_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(VALID)
    config = load_edge_config(path)
    base = path.resolve().parent
    assert config.detector.model_path == base / "models" / "m.onnx"
    assert config.evidence.root == base / "evidence"
    assert config.output.events == str(base / "out" / "events.jsonl")
    assert config.output.detlog_dir == base / "logs"
    assert [c.source.url for c in config.cameras] == [
        str(base / "videos" / "a.mp4"),
        "rtsp://u:p@192.0.2.1/s",
        f"stills:{base / 'snaps'}",
    ]
    assert [c.zones for c in config.cameras] == [
        base / "zones" / "cam-1.yaml",
        Path("/etc/curbwatch/cam-2.yaml"),
        base / "zones" / "cam-3.yaml",
    ]
    with pytest.raises(ValidationError):
        config.device_id = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (("  - id: cam-3", "  - id: cam-1"), ":6:1: cameras: camera ids must be unique; repeated: cam-1"),
        (
            ("device_id: box-1", "device_id: box-1\nsurprise: 1"),
            ":3:1: surprise: Extra inputs are not permitted",
        ),
        (
            ("source: {url: videos/a.mp4, fps: 5}", "source: {url: videos/a.mp4, fps: -5}"),
            ":8:33: cameras[0].source.fps: Input should be greater than 0",
        ),
        (
            ("class_thresholds: {person: 0.5}", "class_thresholds: {person: 1.5}"),
            ":3:58: detector.class_thresholds.person",
        ),
    ],
)
def test_errors_name_the_line(tmp_path: Path, change: tuple[str, str], where: str) -> None:
    path = tmp_path / "edge.yaml"
    path.write_text(VALID.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_edge_config(path)
    assert where in str(caught.value)
