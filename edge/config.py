"""Edge configuration (``edge.yaml``): validated once at load, frozen afterwards.

Each stage owns its section's model; this module only assembles them. Paths in the file are
relative to the file's own folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from curbwatch.edge.detect.batching import BatchingConfig
from curbwatch.edge.detect.motion import GateConfig
from curbwatch.edge.detect.onnx import DetectorConfig
from curbwatch.edge.evidence import EvidenceConfig
from curbwatch.edge.outbox import OutboxConfig
from curbwatch.edge.publisher import PublisherConfig
from curbwatch.edge.rules.bins import BinRuleConfig
from curbwatch.edge.rules.config import RulesConfig
from curbwatch.edge.sampling import SamplingConfig
from curbwatch.edge.sources import SourceConfig
from curbwatch.edge.track import TrackerConfig
from curbwatch.schema.yamlio import load_yaml_model


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or base is None or value.is_absolute():
        return value
    return Path(base) / value


class CameraConfig(_Strict):
    """One camera: where its frames come from and which zones apply."""

    id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        title="Camera id",
        description="Must equal the `camera` of its zone file.",
    )
    source: SourceConfig = Field(title="Source", description="Video file, RTSP URL, stills folder or webcam.")
    zones: Path = Field(title="Zone file", description="Path of the camera's zone YAML.")
    enabled: bool = Field(default=True, title="Enabled", description="Disabled cameras are skipped.")

    _resolve_zones = field_validator("zones")(_resolve)


class OutputConfig(_Strict):
    """Where events and detection logs go."""

    events: str = Field(default="-", title="Events", description="JSON-lines file for events; '-' is stdout.")
    detlog_dir: Path | None = Field(
        default=None,
        title="Detection-log folder",
        description="If set, every frame's detections are recorded to <folder>/<camera>.jsonl for replay.",
    )

    _resolve_detlog = field_validator("detlog_dir")(_resolve)

    @field_validator("events")
    @classmethod
    def resolve_events(cls, value: str, info: ValidationInfo) -> str:
        resolved = _resolve(Path(value), info) if value != "-" else None
        return str(resolved) if resolved is not None else value


class DeliveryConfig(BaseModel):
    """Event delivery to the server over MQTT (``edge.yaml`` section ``delivery``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    outbox_path: Path = Field(
        default=Path("outbox.sqlite"), title="Outbox file", description="SQLite file of undelivered messages."
    )
    outbox: OutboxConfig = Field(default_factory=OutboxConfig, title="Outbox", description="Disk cap.")
    mqtt: PublisherConfig = Field(title="MQTT", description="Broker, credentials, device key, pacing.")
    config_wait_s: float = Field(
        default=5.0,
        ge=0,
        le=120,
        title="Wait for server config (s)",
        description="At start, how long to wait for the broker (and the retained desired config) before "
        "cameras start; cameras start anyway when it passes.",
    )
    flush_on_stop_s: float = Field(
        default=10.0,
        ge=0,
        le=600,
        title="Flush on stop (s)",
        description="How long a shutdown waits for the outbox to drain; what is left is sent next start.",
    )


class EdgeConfig(_Strict):
    """Everything one edge box runs."""

    version: Literal[1] = Field(title="Version", description="Edge config format version.")
    device_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=64,
        title="Device id",
        description="This box's id, as registered with `curbwatch devices add`; names its MQTT topics "
        "and appears in every event.",
    )
    detector: DetectorConfig = Field(title="Detector", description="ONNX model shared by all cameras.")
    batching: BatchingConfig = Field(
        default_factory=BatchingConfig,
        title="Batching",
        description="Merge detector calls of several cameras into one session.run "
        "(pays on GPUs and dynamic-batch models).",
    )
    gate: GateConfig = Field(
        default_factory=GateConfig,
        title="Inference gate",
        description="When frames reach the detector (motion gating).",
    )
    tracker: TrackerConfig = Field(
        default_factory=TrackerConfig,
        title="Tracker",
        description="How detections become tracks and when a track counts as stationary.",
    )
    rules: RulesConfig = Field(
        default_factory=RulesConfig,
        title="Rules",
        description="Episode timing shared by the rules; the per-zone limits are in the zone files.",
    )
    bins: BinRuleConfig = Field(
        default_factory=BinRuleConfig, title="Bin rule", description="Bin-site judging."
    )
    evidence: EvidenceConfig = Field(title="Evidence", description="Where evidence images are stored.")
    output: OutputConfig = Field(
        default_factory=OutputConfig,
        title="Output",
        description="Local copies of events and detection logs (besides delivery).",
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        title="Labelling samples",
        description="Frames with uncertain detections, kept (and sent, with delivery) for labelling.",
    )
    delivery: DeliveryConfig | None = Field(
        default=None,
        title="Delivery",
        description="Send events to the server over MQTT; None keeps them local.",
    )
    cameras: list[CameraConfig] = Field(
        min_length=1, title="Cameras", description="The cameras this box watches; one pipeline each."
    )

    @model_validator(mode="after")
    def verify_delivery_device(self) -> EdgeConfig:
        mqtt_device = self.delivery.mqtt.device_id if self.delivery else self.device_id
        if mqtt_device != self.device_id:
            raise ValueError(
                f"delivery.mqtt.device_id {mqtt_device!r} differs from device_id {self.device_id!r}"
            )
        return self

    @field_validator("cameras")
    @classmethod
    def verify_unique_cameras(cls, cameras: list[CameraConfig]) -> list[CameraConfig]:
        ids = [camera.id for camera in cameras]
        repeated = sorted({cid for cid in ids if ids.count(cid) > 1})
        if repeated:
            raise ValueError(f"camera ids must be unique; repeated: {', '.join(repeated)}")
        return cameras


def load_edge_config(path: Path | str) -> EdgeConfig:
    """Load ``edge.yaml``; relative paths are taken from the file's folder."""
    base_dir = Path(path).resolve().parent
    return _resolve_stage_paths(load_yaml_model(EdgeConfig, path, context={"base_dir": base_dir}), base_dir)


def edge_config_from_dict(data: dict[str, Any], base_dir: Path) -> EdgeConfig:
    config = EdgeConfig.model_validate(data, context={"base_dir": base_dir})
    return _resolve_stage_paths(config, base_dir)


def _resolve_stage_paths(config: EdgeConfig, base_dir: Path) -> EdgeConfig:
    """Anchor the paths inside stage sections (model, video files, evidence) at the config's folder."""

    def anchored(path: Path) -> Path:
        return path if path.is_absolute() else base_dir / path

    detector = config.detector.model_copy(update={"model_path": anchored(config.detector.model_path)})
    delivery = config.delivery
    if delivery is not None:
        delivery = delivery.model_copy(update={"outbox_path": anchored(delivery.outbox_path)})
    evidence = config.evidence.model_copy(update={"root": anchored(config.evidence.root)})
    cameras = [
        camera.model_copy(
            update={
                "source": camera.source.model_copy(update={"url": _anchor_url(camera.source.url, base_dir)})
            }
        )
        for camera in config.cameras
    ]
    return config.model_copy(
        update={"detector": detector, "evidence": evidence, "cameras": cameras, "delivery": delivery}
    )


def _anchor_url(url: str, base_dir: Path) -> str:
    if "://" in url or url.startswith("webcam:"):
        return url
    prefix = "stills:" if url.startswith("stills:") else ""
    path = Path(url.removeprefix(prefix))
    return url if path.is_absolute() else prefix + str(base_dir / path)
