"""Desired configuration from the server: validate first, apply all or nothing, report."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from curbwatch.edge.remote_config import RemoteConfig
from curbwatch.schema.protocol import sign
from curbwatch.schema.zones import ZoneFile

KEY = b"k" * 32
NOW = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


@dataclass
class FakeEdge:
    class_names: tuple[str, ...] = ("person", "car", "truck", "umbrella")
    camera_ids: tuple[str, ...] = ("cam-1", "cam-2")
    zones: dict[str, ZoneFile] = field(default_factory=dict)
    thresholds: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def replace_zones(self, zone_file: ZoneFile) -> None:
        self.zones[zone_file.camera] = zone_file

    def set_thresholds(self, score_threshold: float, class_thresholds: dict[str, float]) -> None:
        self.thresholds.append((score_threshold, class_thresholds))


def zones(camera: str, classes: list[str] | None = None) -> dict[str, Any]:
    zone: dict[str, Any] = {"name": "kerb", "kind": "no_parking", "polygon": [[0, 0], [100, 0], [100, 50]]}
    if classes is not None:
        zone["vehicle_classes"] = classes
    return {"version": 1, "camera": camera, "frame_wh": [640, 480], "timezone": "UTC", "zones": [zone]}


def desired(version: str = "v7", key: bytes = KEY, **changes: Any) -> bytes:
    document: dict[str, Any] = {
        "schema": "curbwatch.config.v1",
        "version": version,
        "zones": {"cam-1": zones("cam-1"), "cam-2": zones("cam-2")},
        "detector": {"score_threshold": 0.35, "class_thresholds": {"person": 0.5}},
        **changes,
    }
    document["sig"] = sign(document, key)
    return json.dumps(document).encode()


def make() -> tuple[FakeEdge, RemoteConfig]:
    edge = FakeEdge()
    return edge, RemoteConfig(edge, "edge-1", KEY, clock=lambda: NOW)


def test_a_valid_config_is_applied_and_reported() -> None:
    edge, remote = make()
    report = remote.apply(desired())
    assert (report.applied_version, report.rejected_version, report.error) == ("v7", None, None)
    assert sorted(edge.zones) == ["cam-1", "cam-2"]
    assert edge.thresholds == [(0.35, {"person": 0.5})]
    again = remote.apply(desired())  # the retained copy after a reconnect changes nothing
    assert again.applied_version == "v7" and edge.thresholds == [(0.35, {"person": 0.5})]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not JSON"),
        (desired(key=b"x" * 32), "signature"),
        (desired(zones={"cam-9": zones("cam-9")}), "cam-9"),
        (desired(zones={"cam-1": zones("cam-2")}), "for camera 'cam-2'"),
        (desired(zones={"cam-1": zones("cam-1", classes=["spaceship"])}), "spaceship"),
        (desired(zones={"cam-1": {**zones("cam-1"), "timezone": "Mars/Base"}}), "Mars/Base"),
        (desired(detector={"score_threshold": 7}), "score_threshold"),
        (desired(detector={"score_threshold": 0.3, "class_thresholds": {"dragon": 0.2}}), "dragon"),
    ],
)
def test_a_bad_config_keeps_the_previous_one(payload: bytes, message: str) -> None:
    edge, remote = make()
    remote.apply(desired("v1"))
    before_zones, before_thresholds = copy.copy(edge.zones), list(edge.thresholds)
    report = remote.apply(payload)
    assert report.applied_version == "v1"
    assert report.error is not None and message in report.error
    assert edge.zones == before_zones and edge.thresholds == before_thresholds


def test_nothing_is_applied_when_one_camera_of_several_is_invalid() -> None:
    edge, remote = make()
    report = remote.apply(desired(zones={"cam-1": zones("cam-1"), "cam-2": zones("cam-2", classes=["tank"])}))
    assert report.rejected_version == "v7" and edge.zones == {} and edge.thresholds == []
