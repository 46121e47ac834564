"""The whole edge on real images and video with the real YOLOX-Nano detector.

These are the issue's must-show cases: a kerb-parked car inside a zone drawn over the kerb is
flagged, the motorway video yields no parking violation, and bad cameras (corrupt video,
invalid zone file, unreachable RTSP) fail alone with a clear reason while the others run.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from curbwatch.edge.config import edge_config_from_dict
from curbwatch.edge.runner import CameraOutcome, EdgeRunner
from curbwatch.edge.sinks import ListSink
from curbwatch.schema.events import EventType

START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)


def write_zone_file(path: Path, camera: str, frame_wh: tuple[int, int], zones: list[dict[str, Any]]) -> Path:
    path.write_text(
        json.dumps(
            {"version": 1, "camera": camera, "frame_wh": list(frame_wh), "timezone": "UTC", "zones": zones}
        ),
        encoding="utf-8",
    )
    return path


def edge_config(tmp_path: Path, model: Path, cameras: list[dict[str, Any]], **sections: Any) -> Any:
    return edge_config_from_dict(
        {
            "version": 1,
            "device_id": "edge-test",
            "detector": {"model_path": str(model)},
            "evidence": {"root": str(tmp_path / "evidence")},
            "cameras": cameras,
            **sections,
        },
        base_dir=tmp_path,
    )


def write_stills(folder: Path, image: np.ndarray, seconds: int, seed: int = 0) -> Path:
    """One noisy snapshot per second, named by its UTC capture time (as many city cameras deliver)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for second in range(seconds):
        noisy = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
        stamp = datetime.fromtimestamp(START.timestamp() + second, UTC).strftime("%Y%m%dT%H%M%SZ")
        cv2.imwrite(str(folder / f"{stamp}.jpg"), noisy)
    return folder


def test_kerb_parked_car_in_a_real_cctv_still_is_flagged(
    tmp_path: Path, data_dir: Path, yolox_nano_path: Path
) -> None:
    image = cv2.imread(str(data_dir / "frigate-cctv" / "driveway_zones.png"))
    stills = write_stills(tmp_path / "stills", image, seconds=75)
    zones = write_zone_file(
        tmp_path / "kerb.yaml",
        "drive",
        (image.shape[1], image.shape[0]),
        [
            {
                "name": "far-kerb",
                "kind": "no_parking",
                "polygon": [[100, 105], [640, 120], [640, 150], [100, 135]],
                "min_dwell_s": 30,
            }
        ],
    )
    config = edge_config(
        tmp_path,
        yolox_nano_path,
        [{"id": "drive", "source": {"url": f"stills:{stills}"}, "zones": str(zones)}],
    )
    sink = ListSink()
    reports = EdgeRunner(config, sink).run()

    assert reports["drive"].outcome is CameraOutcome.ENDED, reports["drive"].error
    starts = [e for e in sink.events if e.type is EventType.START]
    assert len(starts) == 1
    start = starts[0]
    assert (start.zone, start.violation.value, start.event_code) == ("far-kerb", "illegal_parking", "0505")
    assert start.objects[0].label in ("car", "truck")
    x1, _, x2, y2 = start.objects[0].xyxy
    assert 100 < (x1 + x2) / 2 < 280 and 110 < y2 < 140  # the blue hatchback at the far kerb
    # Parked from the first snapshot: flagged at the dwell (stills are 1 s apart), not later.
    assert 30 <= start.dwell_s <= 33
    assert start.episode_start.timestamp() == pytest.approx(START.timestamp(), abs=2)
    assert start.model is not None and start.model.family == "yolox"
    roles = sorted(ref.role.value for ref in start.evidence)
    assert roles == ["annotated", "clean", "crop"]
    for ref in start.evidence:
        data = (tmp_path / "evidence" / ref.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == ref.sha256
    assert [e.type for e in sink.events] == [EventType.START, EventType.END]
    assert reports["drive"].stats.inferred_share < 0.25  # a still street needs few detector runs


def test_motorway_traffic_never_becomes_parking(
    tmp_path: Path, data_dir: Path, yolox_nano_path: Path
) -> None:
    video = data_dir / "degirum-traffic" / "Traffic.mp4"
    zones = write_zone_file(
        tmp_path / "road.yaml",
        "motorway",
        (960, 540),
        [
            {
                "name": "carriageway",
                "kind": "no_parking",
                "polygon": [[0, 150], [960, 150], [960, 540], [0, 540]],
                "min_dwell_s": 2,
            }
        ],
    )
    # A strict set-up: anything still for 3 s and then 2 s more would be flagged.
    config = edge_config(
        tmp_path,
        yolox_nano_path,
        [
            {
                "id": "motorway",
                "source": {"url": str(video), "start_time": START.isoformat()},
                "zones": str(zones),
            }
        ],
        tracker={"stillness": {"stationary_after_s": 3.0}},
        output={"detlog_dir": str(tmp_path / "detlog")},
    )
    sink = ListSink()
    reports = EdgeRunner(config, sink).run()

    assert reports["motorway"].outcome is CameraOutcome.ENDED, reports["motorway"].error
    assert sink.events == []
    frames = [json.loads(line) for line in (tmp_path / "detlog" / "motorway.jsonl").read_text().splitlines()]
    assert len(frames) == reports["motorway"].stats.frames > 300
    vehicles = sum(d["label"] in ("car", "truck", "bus") for f in frames for d in f["detections"])
    assert vehicles > 1000  # the detector saw the traffic: the empty result is not for lack of boxes


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_bad_cameras_fail_alone(tmp_path: Path, data_dir: Path, yolox_nano_path: Path) -> None:
    good_video = data_dir / "intel-sample-videos" / "person-bicycle-car-detection.gif"
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    any_zone = [{"name": "all", "kind": "no_parking", "polygon": [[0, 0], [100, 0], [100, 100], [0, 100]]}]
    zones = {
        name: write_zone_file(tmp_path / f"{name}.yaml", name, (768, 432), any_zone)
        for name in ("good", "corrupt", "rtsp")
    }
    bad_zones = tmp_path / "bad.yaml"
    bad_zones.write_text(
        "version: 1\ncamera: badzone\nframe_wh: [640, 480]\ntimezone: UTC\nzones:\n"
        "  - name: x\n    kind: no_parking\n    polygon: [[0, 0], [10, 10], [10, 0], [0, 10]]\n"
    )
    cameras = [
        {"id": "good", "source": {"url": str(good_video)}, "zones": str(zones["good"])},
        {"id": "corrupt", "source": {"url": str(corrupt)}, "zones": str(zones["corrupt"])},
        {"id": "badzone", "source": {"url": str(good_video)}, "zones": str(bad_zones)},
        {
            "id": "rtsp",
            "zones": str(zones["rtsp"]),
            "source": {
                "url": f"rtsp://user:secret@127.0.0.1:{closed_port()}/stream",
                "open_timeout_s": 1,
                "reconnect_initial_s": 0.2,
                "reconnect_max_s": 0.5,
            },
        },
    ]
    runner = EdgeRunner(edge_config(tmp_path, yolox_nano_path, cameras), ListSink())
    results: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: results.update(runner.run()))
    thread.start()
    time.sleep(8)  # the GIF takes ~2 s; meanwhile the RTSP camera fails to connect several times
    runner.stop()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the runner must stop although a camera never connected"

    assert results["good"].outcome is CameraOutcome.ENDED and results["good"].stats.frames == 41
    assert results["corrupt"].outcome is CameraOutcome.FAILED
    assert "corrupt.mp4" in results["corrupt"].error
    assert results["badzone"].outcome is CameraOutcome.FAILED
    assert "bad.yaml:8:" in results["badzone"].error and "polygon" in results["badzone"].error
    rtsp = results["rtsp"]
    assert rtsp.outcome is CameraOutcome.STOPPED
    assert rtsp.source_status is not None and rtsp.source_status.state == "reconnecting"
    assert rtsp.source_status.reconnects >= 1
    assert "secret" not in (rtsp.source_status.last_error or "")
