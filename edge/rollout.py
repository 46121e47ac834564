"""Model updates pushed by the server: receive, verify, swap between frames, watch, roll back.

An ``update_model`` command (signed, like every command) names the model, its version, sha256 and
size; the bytes follow on ``model/<sha256>/<index>`` in chunks (``docs/protocol.md``). The update
goes through these steps, and its :class:`CommandResultV1` is published once it is settled:

1. The chunks are written into ``<store>/<sha256>/<name>.onnx.part``; when all have come, the file
   must have the announced size and sha256, or the update fails (``failed``, nothing changes).
2. A fresh :class:`OnnxDetector` loads it off the frame path, with the thresholds in force. A load
   error, or a model lacking a class of the current one (the zones name those), fails the update.
3. The runner swaps detectors between two frames; the previous model stays loaded and on disk.
4. Probation: for ``probation_frames`` frames the new model detects, and on every
   ``shadow_every``-th frame the old model runs beside it. A raising new model is rolled back at
   once (that frame is detected with the old one, so none is lost); so is a new model that stays
   empty on more than ``max_miss_share`` of the shadow frames where the old one found objects.
   Either way the result is ``rolled_back`` with the reason; otherwise it is ``applied``.
5. An applied model is recorded in ``<store>/current.json`` (:class:`AppliedModel`), so the box
   keeps it across a restart (:func:`startup_detector`); a failed or rolled-back update leaves
   that record as it was.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from curbwatch.edge.detect.card import file_sha256
from curbwatch.edge.detect.onnx import DetectorConfig, DetectorError, OnnxDetector
from curbwatch.edge.evidence import atomic_write
from curbwatch.edge.messages import Detections
from curbwatch.schema.protocol import CommandResultV1, CommandV1, ModelUpdateArgsV1

logger = logging.getLogger(__name__)

PART_SUFFIX = ".onnx.part"
CURRENT_FILE = "current.json"


def model_store(outbox_path: Path) -> Path:
    """Where received models and the record of the applied one live: the box's state folder."""
    return outbox_path.parent / "models"


class AppliedModel(BaseModel):
    """The model last applied over the air, kept in ``<store>/current.json`` across restarts.

    Attributes:
        name: Model name the update announced.
        version: Model version the update announced.
        sha256: The verified sha256 of ``path``.
        path: The received model file.
        applied_at: When its probation ended.
        configured_path: ``detector.model_path`` of edge.yaml at that time.
        configured_sha256: That file's sha256 then; None when it could not be read.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    sha256: str
    path: Path
    applied_at: datetime
    configured_path: Path
    configured_sha256: str | None


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


class _NotRestored(Exception):
    """Why the applied model is not restored; ``level`` tells a fault from an operator's choice."""

    def __init__(self, reason: str, level: int = logging.WARNING) -> None:
        super().__init__(reason)
        self.level = level


def _restorable(record: Path, configured: Path) -> AppliedModel | None:
    """The model ``record`` names if the box may start with it; None when none was ever applied.

    Raises:
        _NotRestored: The record is unreadable, edge.yaml names another model than it did at the
            update, or the applied file is missing or altered.
    """
    if not record.is_file():
        return None
    try:
        applied = AppliedModel.model_validate_json(record.read_bytes())
    except (OSError, ValidationError) as exc:
        raise _NotRestored(f"{record} is unreadable ({exc})") from exc
    what = f"{applied.name}@{applied.version}"
    if configured.resolve() != applied.configured_path.resolve():
        reason = f"{what}: detector.model_path changed from {applied.configured_path} to {configured}"
        raise _NotRestored(reason, logging.INFO)
    if _sha256_or_none(configured) != applied.configured_sha256:
        raise _NotRestored(f"{what}: the configured model {configured} changed since", logging.INFO)
    actual = _sha256_or_none(applied.path)
    if actual is None:
        raise _NotRestored(f"{what}: its file {applied.path} is missing")
    if actual != applied.sha256:
        raise _NotRestored(f"{what}: {applied.path} has sha256 {actual}, not the recorded {applied.sha256}")
    return applied


def startup_detector(
    config: DetectorConfig,
    store: Path,
    load: Callable[[DetectorConfig], OnnxDetector] = OnnxDetector,
) -> OnnxDetector:
    """The detector to start with: the model last applied over the air, else the configured one.

    The record in ``<store>/current.json`` is used only while edge.yaml still names the model (path
    and sha256) it named when the update was applied: changing ``detector.model_path`` is how an
    operator takes a box back to a model of their choice. A missing, altered or unloadable applied
    model is logged and ignored, never a reason not to start.

    Args:
        config: The ``detector`` section of edge.yaml.
        store: The model store of :class:`ModelUpdater`.
        load: Builds a detector (tests inject fakes).

    Raises:
        DetectorError: The configured model itself cannot be loaded (as without a record).
    """
    try:
        applied = _restorable(store / CURRENT_FILE, config.model_path)
        if applied is None:
            return load(config)
        try:
            detector = load(config.model_copy(update={"model_path": applied.path}))
        except DetectorError as exc:
            raise _NotRestored(f"{applied.name}@{applied.version}: {exc}") from exc
    except _NotRestored as skipped:
        logger.log(
            skipped.level,
            "not restoring the model applied over the air, %s; using the configured model %s",
            skipped,
            config.model_path,
        )
        return load(config)
    logger.info(
        "restored model %s@%s (sha256 %s, applied over the air at %s) from %s instead of the configured %s",
        applied.name,
        applied.version,
        applied.sha256,
        applied.applied_at.isoformat(),
        applied.path,
        config.model_path,
    )
    return detector


class ModelHost(Protocol):
    """What a model update needs from the running edge (``EdgeRunner``)."""

    @property
    def detector(self) -> OnnxDetector: ...

    @property
    def configured_model_path(self) -> Path: ...

    def swap_detector(
        self, detector: OnnxDetector, frame_detect: Callable[[np.ndarray], Detections] | None = None
    ) -> None: ...


class UpdateRefused(ValueError):
    """An ``update_model`` command that cannot start; the answer says why."""


@dataclass(frozen=True)
class ProbationConfig:
    """How long and how closely a new model is watched.

    Attributes:
        probation_frames: Frames the new model must get through before it is kept.
        shadow_every: Every n-th probation frame is also detected with the old model.
        max_miss_share: Roll back when the new model is empty on more than this share of the
            shadow frames where the old one found something.
    """

    probation_frames: int = 60
    shadow_every: int = 3
    max_miss_share: float = 0.5


def load_detector(path: Path, current: OnnxDetector) -> OnnxDetector:
    """A detector for ``path`` with the current one's settings and thresholds in force."""
    detector = OnnxDetector(current.config.model_copy(update={"model_path": path}))
    score, by_class = current.threshold_settings
    detector.set_thresholds(score, by_class)
    return detector


@dataclass
class _Transfer:
    command: CommandV1
    args: ModelUpdateArgsV1
    part: Path
    received: set[int]


@dataclass(frozen=True)
class _Candidate:
    """What ``current.json`` will say if the model on probation is kept."""

    path: Path
    configured_path: Path
    configured_sha256: str | None


class ModelUpdater:
    """Carries out ``update_model`` commands on one edge box, one update at a time.

    Args:
        host: The running edge, whose detector is replaced.
        store: Where received models are kept, one folder per sha256, and ``current.json``.
        publish_result: Sends the settled update's result (on ``command/result``).
        config: The probation.
        load: Builds a detector for a received file (tests inject failing or silent ones).
        clock: Wall clock for ``applied_at``.

    Example:
        >>> updater = ModelUpdater(runner, model_store(outbox_path), publish)
        >>> updater.begin(command)  # then updater.receive_chunk(sha256, index, data) per chunk
    """

    def __init__(
        self,
        host: ModelHost,
        store: Path,
        publish_result: Callable[[CommandResultV1], None],
        config: ProbationConfig | None = None,
        load: Callable[[Path, OnnxDetector], OnnxDetector] = load_detector,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._host = host
        self._store = store
        self._publish = publish_result
        self._config = config or ProbationConfig()
        self._load = load
        self._clock = clock
        self._lock = threading.Lock()
        self._transfer: _Transfer | None = None
        self._probation: Probation | None = None
        self._seen: set[str] = set()  # correlation ids of updates begun: updates are rare, the set small

    def begin(self, command: CommandV1) -> bool:
        """Start receiving the model an authentic ``update_model`` command announces.

        A transfer that never completed is abandoned for the new one (answered ``failed``);
        the same command seen again (a redelivery) is ignored.

        Returns:
            Whether the command started an update (False for one seen before).

        Raises:
            UpdateRefused: Bad arguments, or a model is still on probation.
        """
        try:
            args = ModelUpdateArgsV1.model_validate(command.args)
        except ValidationError as exc:
            raise UpdateRefused(f"bad update_model args: {exc.errors(include_url=False)[0]['msg']}") from exc
        if command.correlation_id in self._seen:
            return False
        self._seen.add(command.correlation_id)
        stale = self._transfer
        if stale is not None:
            self._settle(stale.command, ok=False, state="failed", reason="superseded by a newer update")
        with self._lock:
            if self._probation is not None:
                raise UpdateRefused("another model is still on probation")
            folder = self._store / args.sha256
            folder.mkdir(parents=True, exist_ok=True)
            part = folder / f"{args.name}{PART_SUFFIX}"
            part.unlink(missing_ok=True)
            with part.open("wb") as handle:
                handle.truncate(args.size_bytes)
            self._transfer = _Transfer(command, args, part, set())
        logger.info("model update %s@%s: expecting %d chunks", args.name, args.version, args.chunks)
        return True

    def receive_chunk(self, sha256: str, index: int, data: bytes) -> None:
        """Write one chunk; the last one installs the model. Stray chunks are dropped."""
        transfer = self._transfer
        if transfer is None or transfer.args.sha256 != sha256:
            logger.warning("model chunk %d of %s belongs to no update under way; dropped", index, sha256)
            return
        args = transfer.args
        expected = min(args.chunk_bytes, args.size_bytes - index * args.chunk_bytes)
        if not 0 <= index < args.chunks or len(data) != expected:
            self._settle(
                transfer.command, ok=False, state="failed", reason=f"bad chunk {index} ({len(data)} B)"
            )
            return
        with transfer.part.open("r+b") as handle:
            handle.seek(index * args.chunk_bytes)
            handle.write(data)
        transfer.received.add(index)
        if len(transfer.received) == args.chunks:
            self._install(transfer)

    def _install(self, transfer: _Transfer) -> None:
        args = transfer.args
        received = file_sha256(transfer.part)
        if received != args.sha256:
            transfer.part.unlink(missing_ok=True)
            reason = f"sha256 mismatch: received {received}, announced {args.sha256}"
            self._settle(transfer.command, ok=False, state="failed", reason=reason)
            return
        path = transfer.part.with_name(f"{args.name}.onnx")
        transfer.part.replace(path)
        old = self._host.detector
        try:
            new = self._load(path, old)
        except (DetectorError, OSError) as exc:
            self._settle(transfer.command, ok=False, state="failed", reason=f"load error: {exc}")
            return
        missing = sorted(set(old.class_names) - set(new.class_names))
        if missing:
            reason = f"model lacks classes the zones use: {', '.join(missing)}"
            self._settle(transfer.command, ok=False, state="failed", reason=reason)
            return
        # Hashed here, off the frame path: the verdict comes on a camera thread.
        configured = self._host.configured_model_path
        candidate = _Candidate(path.resolve(), configured.resolve(), _sha256_or_none(configured))
        probation = Probation(
            new, old, self._config, lambda verdict: self._verdict(transfer, candidate, verdict)
        )
        with self._lock:
            self._transfer, self._probation = None, probation
        self._host.swap_detector(new, probation.detect)

    def _verdict(self, transfer: _Transfer, candidate: _Candidate, verdict: Verdict) -> None:
        probation = self._probation
        assert probation is not None  # only a probation gives a verdict
        if verdict.rollback:
            self._host.swap_detector(probation.old)
        else:
            self._host.swap_detector(probation.new)
            self._record(transfer.args, candidate)
        state = "rolled_back" if verdict.rollback else "applied"
        self._settle(
            transfer.command, ok=not verdict.rollback, state=state, reason=verdict.reason, **verdict.stats
        )

    def _record(self, args: ModelUpdateArgsV1, candidate: _Candidate) -> None:
        applied = AppliedModel(
            name=args.name,
            version=args.version,
            sha256=args.sha256,
            path=candidate.path,
            applied_at=self._clock(),
            configured_path=candidate.configured_path,
            configured_sha256=candidate.configured_sha256,
        )
        try:
            atomic_write(self._store / CURRENT_FILE, applied.model_dump_json(indent=2).encode())
        # The model is in service either way; only a restart would lose it, so say so loudly.
        except OSError:
            logger.exception(
                "model %s@%s applied but not recorded: a restart goes back", args.name, args.version
            )

    def _settle(self, command: CommandV1, *, ok: bool, state: str, reason: str | None, **stats: Any) -> None:
        card = self._host.detector.card
        result = {"state": state, "model_version": f"{card.name}@{card.version}", "sha256": card.sha256}
        if reason:
            result["reason"] = reason
        with self._lock:
            self._transfer = self._probation = None
        log = logger.info if ok else logger.warning
        log("model update %s: %s %s", command.correlation_id, state, reason or "")
        self._publish(
            CommandResultV1(
                correlation_id=command.correlation_id,
                ok=ok,
                result={**result, **stats},
                error=None if ok else f"{state}: {reason}",
            )
        )


@dataclass(frozen=True)
class Verdict:
    """How a probation ended."""

    rollback: bool
    reason: str | None
    stats: dict[str, int]


class Probation:
    """Detects camera frames with a new model while checking it against the old one.

    Args:
        new: The model on trial.
        old: The model it replaces, still loaded.
        config: Length and sampling of the probation.
        on_verdict: Called once, from the camera thread that finishes the probation.
    """

    def __init__(
        self,
        new: OnnxDetector,
        old: OnnxDetector,
        config: ProbationConfig,
        on_verdict: Callable[[Verdict], None],
    ) -> None:
        self.new, self.old = new, old
        self._config = config
        self._on_verdict = on_verdict
        self._lock = threading.Lock()
        self._decided = False
        self.frames = self.shadow_frames = self.old_found = self.misses = 0

    def detect(self, image: np.ndarray) -> Detections:
        """Detect one camera frame; never loses it, whatever the new model does."""
        try:
            found = self.new.detect(image)
        # Any fault of the new model is a reason to roll back, and the frame still gets detected.
        except Exception as exc:
            logger.exception("model on probation raised")
            self._decide(rollback=True, reason=f"new model raised {type(exc).__name__}: {exc}")
            return self.old.detect(image)
        with self._lock:
            self.frames += 1
            frame = self.frames
        if frame % self._config.shadow_every == 0:
            shadow = self.old.detect(image)
            with self._lock:
                self.shadow_frames += 1
                if len(shadow.scores):
                    self.old_found += 1
                    self.misses += not len(found.scores)
        if frame >= self._config.probation_frames:
            self._finish()
        return found

    def _finish(self) -> None:
        share = self.misses / self.old_found if self.old_found else 0.0
        if share > self._config.max_miss_share:
            misses, found = self.misses, self.old_found
            reason = f"no detections on {misses} of {found} sampled frames where the old model had some"
            self._decide(rollback=True, reason=reason)
        else:
            self._decide(rollback=False, reason=None)

    def _decide(self, *, rollback: bool, reason: str | None) -> None:
        with self._lock:
            if self._decided:
                return
            self._decided = True
            stats = {"frames": self.frames, "shadow_frames": self.shadow_frames, "misses": self.misses}
        self._on_verdict(Verdict(rollback, reason, stats))
