"""Batching of detector calls from several cameras into one ``session.run``.

Camera threads call :meth:`BatchingDetector.detect` as they would call the detector itself; a
collector thread gathers the requests that arrive within a short window and runs them as one
batch. That pays on a GPU (one launch instead of N) and for models exported with a dynamic
batch axis; on a 2-core CPU concurrent single calls are as fast, and a model with a fixed batch
of 1 cannot batch at all — then calls go straight through.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from curbwatch.edge.detect.onnx import OnnxDetector
from curbwatch.edge.messages import Detections

logger = logging.getLogger(__name__)


class BatchingConfig(BaseModel):
    """When detector calls from several cameras are merged."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_ms: float = Field(
        default=0.0,
        ge=0,
        le=200,
        title="Batch window (ms)",
        description="How long the first request waits for others; 0 turns batching off. A few ms "
        "is enough with many cameras; every ms is added to each frame's latency.",
    )
    max_batch: int = Field(
        default=8, ge=1, le=64, title="Largest batch", description="Most frames in one session.run."
    )


class BatchingDetector:
    """Merges concurrent ``detect`` calls into ``detect_batch`` calls.

    Args:
        detector: The shared detector.
        config: Window and batch size; batching is off when the window is 0 or the model's batch
            axis is fixed at 1.

    Example:
        >>> shared = BatchingDetector(OnnxDetector(config), BatchingConfig(window_ms=4))
        >>> detections = shared.detect(frame.image)  # from any camera thread
        >>> shared.close()
    """

    def __init__(self, detector: OnnxDetector, config: BatchingConfig) -> None:
        self.detector = detector
        self.config = config
        fixed = detector.max_batch
        self.max_batch = min(config.max_batch, fixed) if fixed else config.max_batch
        self.enabled = config.window_ms > 0 and self.max_batch > 1
        self.batch_sizes: list[int] = []  # sizes of the batches run, for metrics and tests
        self._requests: queue.Queue[tuple[np.ndarray, Future[Detections]] | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        if self.enabled:
            self._worker = threading.Thread(target=self._collect, name="detector-batching", daemon=True)
            self._worker.start()
        elif config.window_ms > 0:
            logger.info("model %s has a fixed batch of 1: detector calls are not batched", detector.card.name)

    def replace(self, detector: OnnxDetector) -> None:
        """Serve later calls with ``detector`` (a model update); a call under way finishes on the old one.

        The collector thread is started (or not) at construction: batching stays on or off, with
        batches no larger than the new model takes.
        """
        fixed = detector.max_batch
        self.max_batch = min(self.config.max_batch, fixed) if fixed else self.config.max_batch
        self.detector = detector

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.detector.class_names

    def detect(self, image: np.ndarray) -> Detections:
        """Detect in one frame; with batching on, waits for the batch that carries it."""
        if not self.enabled:
            return self.detector.detect(image)
        result: Future[Detections] = Future()
        self._requests.put((image, result))
        return result.result()

    def close(self) -> None:
        if self._worker is not None:
            self._requests.put(None)
            self._worker.join()
            self._worker = None

    def _collect(self) -> None:
        window_s = self.config.window_ms / 1000.0
        while True:
            first = self._requests.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._requests.get(timeout=window_s)
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[np.ndarray, Future[Detections]]]) -> None:
        self.batch_sizes.append(len(batch))
        try:
            results = self.detector.detect_batch([image for image, _ in batch])
        except Exception as exc:  # the error belongs to the cameras that asked, not to this thread
            for _, future in batch:
                future.set_exception(exc)
            return
        for (_, future), detections in zip(batch, results, strict=True):
            future.set_result(detections)
