"""Commands from the server, verified with the device key and answered on ``command/result``.

The server signs every ``CommandV1`` with this device's HMAC key, as it signs desired
configurations; an unsigned, forged or malformed command is logged and dropped unanswered, since
nothing in it can be trusted, not even its correlation id.

- ``snapshot`` ``{camera_id}``: the camera's last frame with its privacy masks applied and every
  head blurred (as in shareable evidence), stored as evidence and queued in the outbox, so it
  reaches the server with the ordinary ack and retry. The result names its ``sha256``, the
  ``camera_id`` and the frame time ``ts``.
- ``ping``: answers ok.
- ``update_model``: starts a model update (``edge/rollout.py``); it is answered once the update is
  settled (applied, rolled back or failed), not at once.

Anything else, an unknown camera, or a camera without a frame yet is answered ``ok=false`` with
why. A command seen again (a redelivery, or a replay of a captured one) gets the first answer
again rather than a second snapshot.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from pydantic import ValidationError

from curbwatch.edge.evidence import EvidenceWriter, people_in
from curbwatch.edge.messages import Detections, Frame
from curbwatch.edge.outbox import Outbox
from curbwatch.edge.rollout import ModelUpdater, UpdateRefused
from curbwatch.schema.protocol import CommandResultV1, CommandV1, verify

logger = logging.getLogger(__name__)

REMEMBERED_ANSWERS = 256


class SnapshotSource(Protocol):
    """What answering commands needs from the running edge (``EdgeRunner``)."""

    @property
    def camera_ids(self) -> tuple[str, ...]: ...

    @property
    def evidence(self) -> EvidenceWriter: ...

    def latest_frame(self, camera_id: str) -> Frame | None: ...

    def detect(self, image: np.ndarray) -> Detections: ...


class CommandRefused(ValueError):
    """A command is not authentic or not a command at all; it gets no answer."""


class CommandFailed(Exception):
    """An authentic command could not be carried out; the answer says why."""


class Commands:
    """Verifies and carries out server commands.

    Args:
        source: The running edge: cameras, their last frames, the detector and the evidence store.
        outbox: Where snapshot images are queued for delivery.
        key: The device's HMAC key, which the server signs commands with.
        updater: Carries out model updates; without one, ``update_model`` is refused.

    Example:
        >>> commands = Commands(runner, uplink.outbox, key)
        >>> result = commands.handle(message.payload)  # publish it on command/result, QoS 1
    """

    def __init__(
        self, source: SnapshotSource, outbox: Outbox, key: bytes, updater: ModelUpdater | None = None
    ) -> None:
        self._source = source
        self._updater = updater
        self._outbox = outbox
        self._key = key
        self._answers: OrderedDict[str, CommandResultV1] = OrderedDict()

    def handle(self, payload: bytes) -> CommandResultV1 | None:
        """Carry out one command; the result to publish, or None for a refused one. Never raises."""
        try:
            command = self._parse(payload)
        except CommandRefused as exc:
            logger.warning("command refused: %s", exc)
            return None
        known = self._answers.get(command.correlation_id)
        if known is not None:
            logger.info("command %s seen before; answering as before", command.correlation_id)
            return known
        correlation_id = command.correlation_id
        if command.name == "update_model" and self._updater is not None:
            return self._update(command)
        try:
            result = CommandResultV1(correlation_id=correlation_id, ok=True, result=self._run(command))
        except CommandFailed as exc:
            logger.warning("command %s %s failed: %s", command.name, correlation_id, exc)
            result = CommandResultV1(correlation_id=correlation_id, ok=False, error=str(exc))
        self._answers[correlation_id] = result
        if len(self._answers) > REMEMBERED_ANSWERS:
            self._answers.popitem(last=False)
        return result

    def _update(self, command: CommandV1) -> CommandResultV1 | None:
        """Start a model update; its answer follows when it is settled (None now)."""
        assert self._updater is not None  # checked by the caller
        try:
            self._updater.begin(command)
        except UpdateRefused as exc:
            logger.warning("update_model %s refused: %s", command.correlation_id, exc)
            result = CommandResultV1(
                correlation_id=command.correlation_id, ok=False, result={"state": "failed"}, error=str(exc)
            )
            self._answers[command.correlation_id] = result
            return result
        return None

    def _parse(self, payload: bytes) -> CommandV1:
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandRefused(f"not JSON: {exc}") from exc
        if not isinstance(document, dict) or not verify(document, self._key):
            raise CommandRefused("signature does not match this device's key")
        try:
            return CommandV1.model_validate(document)
        except ValidationError as exc:
            raise CommandRefused(f"not a command: {exc.errors(include_url=False)[0]['msg']}") from exc

    def _run(self, command: CommandV1) -> dict[str, Any]:
        if command.name == "ping":
            return {}
        if command.name != "snapshot":
            raise CommandFailed(f"command {command.name!r} is not supported by this device")
        try:
            return self._snapshot(command)
        except CommandFailed:
            raise
        # A fault in the detector or the store must still be answered, or the check waits forever.
        except Exception as exc:
            logger.exception("snapshot %s failed", command.correlation_id)
            raise CommandFailed(f"{type(exc).__name__}: {exc}") from exc

    def _snapshot(self, command: CommandV1) -> dict[str, Any]:
        camera_id = command.args.get("camera_id")
        if not isinstance(camera_id, str) or camera_id not in self._source.camera_ids:
            raise CommandFailed(f"camera {camera_id!r} does not run on this box")
        frame = self._source.latest_frame(camera_id)
        if frame is None:
            raise CommandFailed(f"camera {camera_id} has no frame yet")
        people = people_in(self._source.detect(frame.image), frame.ts)
        writer = self._source.evidence
        ref = writer.write_snapshot(frame, people, command.correlation_id)
        self._outbox.put_evidence(ref.sha256, writer.config.root / ref.path)
        logger.info("snapshot %s of %s queued as evidence %s", command.correlation_id, camera_id, ref.sha256)
        return {
            "sha256": ref.sha256,
            "camera_id": camera_id,
            "ts": datetime.fromtimestamp(frame.ts, UTC).isoformat(),
        }
