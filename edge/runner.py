"""Runs every camera of an edge box, each in its own thread, sharing one detector.

A camera that fails (bad zone file, unreadable video, repeated stage errors) stops alone with
a clear reason; the others keep running. Live sources reconnect by themselves. Each camera's last
frame is kept, so the server can ask for a fresh image (``edge/commands.py``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from curbwatch.edge.config import CameraConfig, EdgeConfig
from curbwatch.edge.detect.batching import BatchingDetector
from curbwatch.edge.detect.onnx import OnnxDetector
from curbwatch.edge.events import EventBuilder
from curbwatch.edge.evidence import EvidenceWriter
from curbwatch.edge.messages import Detections, Frame
from curbwatch.edge.pipeline import CameraPipeline, PipelineParts, PipelineStats, open_detlog
from curbwatch.edge.sampling import CameraSampling, SampleSink
from curbwatch.edge.sinks import EventSink
from curbwatch.edge.sources import CameraStatus, SourceError, SourceReadError, open_source
from curbwatch.edge.zones import ZoneSet
from curbwatch.schema.events import ModelRefV1
from curbwatch.schema.yamlio import ConfigError
from curbwatch.schema.zones import ZoneFile, load_zone_file

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_ERRORS = 25
READ_POLL_S = 1.0  # a silent live source is polled this often so a stop request is noticed


class CameraOutcome(StrEnum):
    """How a camera's run finished."""

    ENDED = "ended"  # the source ended (file or stills folder)
    STOPPED = "stopped"  # asked to stop
    FAILED = "failed"


@dataclass
class CameraReport:
    """What happened to one camera."""

    camera_id: str
    outcome: CameraOutcome = CameraOutcome.STOPPED
    error: str | None = None
    stats: PipelineStats = field(default_factory=PipelineStats)
    source_status: CameraStatus | None = None


def model_ref(detector: OnnxDetector) -> ModelRefV1:
    card = detector.card
    return ModelRefV1(name=card.name, version=card.version, sha256=card.sha256, family=card.family)


class EdgeRunner:
    """Starts one thread per enabled camera and waits for them.

    Args:
        config: The validated edge configuration.
        sink: Receives every event.
        detector: A loaded detector; built from ``config.detector`` when omitted.
        samples: Receives labelling samples when ``config.sampling`` is on; None keeps them on disk.

    Example:
        >>> runner = EdgeRunner(load_edge_config("edge.yaml"), JsonLinesSink(sys.stdout))
        >>> reports = runner.run()
    """

    def __init__(
        self,
        config: EdgeConfig,
        sink: EventSink,
        detector: OnnxDetector | None = None,
        samples: SampleSink | None = None,
    ) -> None:
        self._config = config
        self._sink = sink
        self._samples = samples
        self._detector = detector or OnnxDetector(config.detector)
        self._shared_detector = BatchingDetector(self._detector, config.batching)
        # What camera frames are detected with; a model on probation (edge/rollout.py) wraps it.
        self._frame_detect: Callable[[np.ndarray], Detections] = self._shared_detector.detect
        self._parts = PipelineParts(
            gate=config.gate, tracker=config.tracker, rules=config.rules, bins=config.bins
        )
        self._evidence = EvidenceWriter(config.evidence)
        self._stop = threading.Event()
        self._pipelines: dict[str, CameraPipeline] = {}
        self.reports = {camera.id: CameraReport(camera.id) for camera in config.cameras if camera.enabled}
        self._zone_overrides: dict[str, ZoneFile] = {}  # remote zone files, also for cameras not yet started
        self._latest: dict[str, tuple[Frame, ZoneFile]] = {}  # per camera: last frame, zones in force

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._detector.class_names

    @property
    def model_version(self) -> str:
        card = self._detector.card
        return f"{card.name}@{card.version}"

    @property
    def detector(self) -> OnnxDetector:
        """The model in service."""
        return self._detector

    @property
    def configured_model_path(self) -> Path:
        """The model edge.yaml names, which a model applied over the air records (edge/rollout.py)."""
        return self._config.detector.model_path

    def swap_detector(
        self, detector: OnnxDetector, frame_detect: Callable[[np.ndarray], Detections] | None = None
    ) -> None:
        """Put ``detector`` in service between two frames: no frame is dropped or detected twice.

        Each assignment is atomic, so a frame being detected finishes on the model it started with
        and the next frame takes the new one. ``frame_detect`` (a probation guard) replaces the
        cameras' detector call until the next swap; None restores the shared, batching one.
        """
        self._detector = detector
        self._shared_detector.replace(detector)
        self._frame_detect = frame_detect or self._shared_detector.detect
        logger.info("model %s in service", self.model_version)

    def _detect_frame(self, image: np.ndarray) -> Detections:
        return self._frame_detect(image)

    def _model_ref(self) -> ModelRefV1:
        return model_ref(self._detector)

    @property
    def camera_ids(self) -> tuple[str, ...]:
        return tuple(camera.id for camera in self._config.cameras if camera.enabled)

    def replace_zones(self, zone_file: ZoneFile) -> None:
        """Give a camera a new zone file; a running camera takes it at its next frame."""
        if zone_file.camera not in self.camera_ids:
            raise KeyError(f"camera {zone_file.camera!r} is not configured on this box")
        self._zone_overrides[zone_file.camera] = zone_file
        pipeline = self._pipelines.get(zone_file.camera)
        if pipeline is not None:
            pipeline.replace_zones(zone_file)

    def set_thresholds(self, score_threshold: float, class_thresholds: dict[str, float]) -> None:
        self._detector.set_thresholds(score_threshold, class_thresholds)

    @property
    def evidence(self) -> EvidenceWriter:
        """The evidence store the cameras write to."""
        return self._evidence

    def latest_frame(self, camera_id: str) -> Frame | None:
        """The camera's last frame with its privacy masks applied; None before its first frame."""
        latest = self._latest.get(camera_id)
        if latest is None:
            return None
        frame, zone_file = latest
        image = ZoneSet(zone_file, frame.resolution_wh).apply_privacy_masks(frame.image)
        return Frame(frame.camera_id, frame.ts, image, frame.index)

    def detect(self, image: np.ndarray) -> Detections:
        """Detect in one image outside the camera loops (the unbatched detector: it outlives ``run``)."""
        return self._detector.detect(image)

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> dict[str, CameraReport]:
        """Run every enabled camera until its source ends, it fails, or ``stop()`` is called."""
        cameras = [camera for camera in self._config.cameras if camera.enabled]
        threads = [
            threading.Thread(
                target=self._run_camera, args=(camera, self.reports[camera.id]), name=f"camera-{camera.id}"
            )
            for camera in cameras
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self._shared_detector.close()
        return self.reports

    def _run_camera(self, camera: CameraConfig, report: CameraReport) -> None:
        try:
            self._camera_loop(camera, report)
        except (ConfigError, SourceError, ValueError, OSError) as exc:
            report.outcome, report.error = CameraOutcome.FAILED, str(exc)
            logger.error("camera %s failed: %s", camera.id, exc)
        # The per-camera loop is the one place that must not let a bug stop the other cameras.
        except Exception as exc:
            report.outcome, report.error = CameraOutcome.FAILED, f"{type(exc).__name__}: {exc}"
            logger.exception("camera %s crashed", camera.id)

    def _camera_loop(self, camera: CameraConfig, report: CameraReport) -> None:
        zone_file = self._zone_overrides.get(camera.id) or load_zone_file(
            camera.zones, class_names=self._detector.class_names
        )
        if zone_file.camera != camera.id:
            raise ValueError(
                f"zone file {camera.zones} is for camera {zone_file.camera!r}, not {camera.id!r}"
            )
        builder = EventBuilder(
            self._config.device_id,
            zone_file,
            self._model_ref,
            estimator=self._config.bins.estimator,
        )
        detlog = open_detlog(self._config.output.detlog_dir, camera.id)
        sampling = None
        if self._config.sampling.enabled:
            sampling = CameraSampling(
                self._config.sampling, self._evidence, self._config.device_id, self._model_ref, self._samples
            )
        pipeline = CameraPipeline(
            zone_file, self._detect_frame, builder, self._parts, self._evidence, detlog, sampling
        )
        report.stats = pipeline.stats
        self._pipelines[camera.id] = pipeline
        errors_in_a_row = 0
        try:
            with open_source(camera.source, camera.id) as source:
                while not self._stop.is_set():
                    try:
                        frame = source.read(timeout_s=READ_POLL_S)
                    except SourceReadError:
                        report.source_status = source.status  # reconnecting by itself; keep polling
                        continue
                    report.source_status = source.status
                    if frame is None:
                        report.outcome = CameraOutcome.ENDED
                        break
                    self._latest[camera.id] = (frame, self._zone_overrides.get(camera.id, zone_file))
                    try:
                        events = pipeline.process(frame)
                        errors_in_a_row = 0
                    except Exception:  # one bad frame must not end the camera; a persistent fault must
                        errors_in_a_row += 1
                        logger.exception("camera %s: frame at ts=%.3f failed", camera.id, frame.ts)
                        if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                            raise
                        continue
                    for event in events:
                        self._sink.emit(event)
        finally:
            for event in pipeline.close():
                self._sink.emit(event)
            if detlog is not None:
                detlog.close()
