"""The ``curbwatch`` commands: exit codes, messages and output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.schema.detlog import LoggedDetection, LoggedFrame
from tests.conftest import REPO_ROOT
from tests.scenarios import T0, parked_car, render, zone_file
from tests.scenarios import Scenario as GeneratedScenario

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _leaf_commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a command group
            found += _leaf_commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def test_every_command_has_help_with_examples() -> None:
    commands = _leaf_commands(typer.main.get_command(app))
    assert ("server", "web") in commands and ("train", "bins") in commands
    for command in commands:
        code, out, _ = invoke(*command, "--help")
        assert code == 0 and "Example" in out, command


def test_zones_check_reports_line_and_exit_code(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncamera: c\nframe_wh: [640, 480]\ntimezone: Mars/Olympus\nzones: []\n")
    code, out, err = invoke("zones", "check", str(REPO_ROOT / "zones" / "demo-kerb.yaml"), str(bad))
    assert code == 1
    assert "demo-kerb.yaml: ok (3 zones)" in out
    assert f"{bad}:4:1: timezone: unknown time zone 'Mars/Olympus'" in err
    assert f"{bad}:5:1: zones:" in err


def test_zones_check_against_the_model_vocabulary(tmp_path: Path, yolox_nano_path: Path) -> None:
    zones = tmp_path / "z.yaml"
    zones.write_text(
        "version: 1\ncamera: c\nframe_wh: [640, 480]\ntimezone: UTC\nzones:\n"
        "  - name: k\n    kind: no_parking\n    polygon: [[0, 0], [100, 0], [100, 100]]\n"
        "    vehicle_classes: [car, tuk-tuk]\n"
    )
    code, _, err = invoke("zones", "check", str(zones), "--model", str(yolox_nano_path))
    assert code == 1 and ":9:5: zones[0].vehicle_classes: classes the model does not know: tuk-tuk" in err


def test_import_pklot_writes_a_valid_zone_file(tmp_path: Path, data_dir: Path) -> None:
    xml = next((data_dir / "pklot-ufpr05" / "sequence0" / "bounding_boxes").glob("*.xml"))
    out = tmp_path / "ufpr05.yaml"
    code, _, _ = invoke(
        "zones",
        "import-pklot",
        str(xml),
        "--camera",
        "ufpr05",
        "--timezone",
        "America/Sao_Paulo",
        "--out",
        str(out),
    )
    assert code == 0
    code, stdout, _ = invoke("zones", "check", str(out))
    assert code == 0 and "(40 zones)" in stdout


def test_replay_prints_events_from_a_detection_log(tmp_path: Path) -> None:
    zones = tmp_path / "scn.yaml"
    zones.write_text(json.dumps(zone_file().model_dump(mode="json")))
    frames = render(GeneratedScenario("one car", [parked_car(20, 300, x=300)], [], 360.0), seed=5)
    log = tmp_path / "scn.jsonl"
    log.write_text("".join(frame.model_dump_json(by_alias=True) + "\n" for frame in frames))
    code, out, _ = invoke("replay", str(zones), str(log))
    assert code == 0
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["type"] for e in events if e["type"] != "update"] == ["start", "end"]
    assert events[0]["event_code"] == "0505" and events[0]["dwell_s"] >= 120


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":2: "),
        (
            json.dumps(
                {
                    "ts": T0,
                    "frame_wh": [1280, 720],
                    "detections": [{"label": "car", "score": 2, "xyxy": [0, 0, 1, 1]}],
                }
            ),
            "score",
        ),
        (json.dumps({"ts": T0 - 100, "frame_wh": [1280, 720]}), "goes back in time"),
        (json.dumps({"ts": T0 + 1, "frame_wh": [1280, 720], "camera": "other"}), "from camera 'other'"),
    ],
)
def test_replay_rejects_bad_logs_with_the_line(tmp_path: Path, line: str, message: str) -> None:
    zones = tmp_path / "scn.yaml"
    zones.write_text(json.dumps(zone_file().model_dump(mode="json")))
    first = LoggedFrame(
        ts=T0, frame_wh=(1280, 720), detections=[LoggedDetection(label="car", score=0.9, xyxy=(0, 0, 10, 10))]
    )
    log = tmp_path / "bad.jsonl"
    log.write_text(first.model_dump_json(by_alias=True) + "\n" + line + "\n")
    code, _, err = invoke("replay", str(zones), str(log))
    assert code == 1 and message in err


def test_edge_run_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"definitely not a protobuf" * 10)
    video = tmp_path / "v.mp4"
    video.write_bytes(b"")
    code, _, err = invoke(
        "edge",
        "run",
        "--source",
        str(video),
        "--model",
        str(model),
        "--zones",
        str(REPO_ROOT / "zones" / "demo-kerb.yaml"),
    )
    assert code == 1
    assert "model.onnx" in err and "onnxruntime" in err


def test_edge_check_config_points_at_the_line(tmp_path: Path) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(
        "version: 1\ndevice_id: box-1\ndetector: {model_path: m.onnx}\nevidence: {root: ev}\n"
        "tracker: {match_iou: 3}\ncameras:\n  - {id: c1, source: {url: a.mp4}, zones: z.yaml}\n"
    )
    code, _, err = invoke("edge", "check-config", str(config))
    assert code == 1 and f"{config}:5:11: tracker.match_iou" in err


def test_schema_export_check_detects_stale_files(tmp_path: Path) -> None:
    dirs = ("--out-dir", str(tmp_path), "--reference-dir", str(tmp_path / "reference"))
    assert invoke("schema", "export", *dirs)[0] == 0
    assert invoke("schema", "export", "--check", *dirs)[0] == 0
    (tmp_path / "curbwatch.event.v1.json").write_text("{}")
    code, _, err = invoke("schema", "export", "--check", *dirs)
    assert code == 1 and "curbwatch.event.v1.json" in err
