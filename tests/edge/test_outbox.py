"""The durable outbox: order, seq, evidence, acks, the disk cap, and surviving SIGKILL."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curbwatch.edge.outbox import ItemKind, Outbox, OutboxConfig, OutboxError, OutboxSink, PutResult
from curbwatch.schema.events import EventV1, EvidenceRefV1, example_event_document
from curbwatch.schema.protocol import EnvelopeV1, HeartbeatV1, verify
from tests.conftest import REPO_ROOT

DEVICE = "edge-1"
KEY = bytes(range(32))


def make_event(
    type_: str = "start", episode_id: str | None = None, evidence: list[EvidenceRefV1] | None = None
) -> EventV1:
    return EventV1.model_validate(
        example_event_document(
            episode_id=episode_id or uuid.uuid4().hex,
            type=type_,
            device_id=DEVICE,
            end_reason="left" if type_ == "end" else None,
            evidence=evidence or [],
        )
    )


def make_image(root: Path, name: str, size: int = 2000) -> EvidenceRefV1:
    """A fake JPEG under ``root`` and its reference."""
    data = hashlib.sha256(name.encode()).digest() * (size // 32 + 1)
    data = data[:size]
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(data)
    return EvidenceRefV1(
        role="clean",
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=size,
        width=1280,
        height=720,
        path=name,
        restricted=True,
    )


def open_outbox(path: Path, max_bytes: int = 10**9) -> Outbox:
    return Outbox(path, OutboxConfig(max_bytes=max_bytes), device_id=DEVICE, key=KEY)


def make_heartbeat() -> HeartbeatV1:
    return HeartbeatV1(
        device_id=DEVICE, ts=datetime.now(UTC), outbox_depth=0, outbox_bytes=0, disk_free_bytes=1
    )


def test_event_is_signed_sequenced_and_queued_after_its_evidence(tmp_path: Path) -> None:
    refs = [make_image(tmp_path, "cam-1/a.jpg"), make_image(tmp_path, "cam-1/b.jpg")]
    event = make_event(evidence=refs)
    with open_outbox(tmp_path / "outbox.db") as outbox:
        OutboxSink(outbox, tmp_path).emit(event)
        items = outbox.lease(10)
    assert [(i.kind, i.ref) for i in items] == [
        (ItemKind.EVIDENCE, refs[0].sha256),
        (ItemKind.EVIDENCE, refs[1].sha256),
        (ItemKind.EVENT, event.event_id),
    ]
    assert items[0].path == tmp_path / "cam-1/a.jpg" and items[0].size == 2000
    document = json.loads(items[2].payload or b"")
    envelope = EnvelopeV1.model_validate(document)
    assert verify(document, KEY)
    assert (envelope.seq, envelope.message_id, envelope.device_id) == (1, event.event_id, DEVICE)
    assert EventV1.model_validate(envelope.payload) == event


def test_seq_is_contiguous_and_survives_reopen_and_acks(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.db") as outbox:
        first = [make_event() for _ in range(3)]
        for event in first:
            outbox.put_event(event, [])
        for event in first:
            assert outbox.ack("event", event.event_id) == 1
    with open_outbox(tmp_path / "o.db") as outbox:
        outbox.put_event(make_event(), [])
        assert [item.seq for item in outbox.lease(10)] == [4]


def test_ack_is_idempotent_and_ignores_unknown_ids(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.db") as outbox:
        event = make_event()
        outbox.put_event(event, [])
        assert outbox.ack("event", "f" * 32) == 0
        assert outbox.ack("evidence", event.event_id) == 0  # right id, wrong kind
        assert outbox.depth() == 1
        assert outbox.ack("event", event.event_id) == 1
        assert outbox.ack("event", event.event_id) == 0
        assert (outbox.depth(), outbox.bytes_used()) == (0, 0)


def test_lease_after_cursor_pages_through_in_order(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.db") as outbox:
        events = [make_event() for _ in range(5)]
        for event in events:
            outbox.put_event(event, [])
        page1 = outbox.lease(2)
        page2 = outbox.lease(10, after=page1[-1].id)
    assert [i.ref for i in page1 + page2] == [e.event_id for e in events]


def test_foreign_device_event_is_an_error(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.db") as outbox, pytest.raises(OutboxError):
        outbox.put_event(make_event().model_copy(update={"device_id": "edge-2"}), [])


def test_unreadable_evidence_is_skipped_and_the_event_kept(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.db") as outbox:
        event = make_event()
        outbox.put_event(event, [("0" * 64, tmp_path / "missing.jpg")])
        assert [i.kind for i in outbox.lease(10)] == [ItemKind.EVENT]


def test_only_the_newest_heartbeat_is_kept(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.db") as outbox:
        outbox.put_heartbeat(make_heartbeat())
        newest = make_heartbeat()
        outbox.put_heartbeat(newest)
        stored = outbox.latest_heartbeat()
        assert stored is not None and HeartbeatV1.model_validate_json(stored.payload or b"") == newest
        assert outbox.depth() == 0  # heartbeats are not part of the delivery backlog
        assert outbox.lease(10) == []


# -- disk cap policy --------------------------------------------------------------------------


def _fill(outbox: Outbox, root: Path, plan: list[tuple[str, str]]) -> dict[str, EventV1]:
    """Put events by (type, episode name); each carries one 5,000-byte image."""
    episodes: dict[str, str] = {}
    events: dict[str, EventV1] = {}
    for n, (type_, episode) in enumerate(plan):
        ref = make_image(root, f"{episode}-{n}.jpg", size=5000)
        event = make_event(type_, episodes.setdefault(episode, uuid.uuid4().hex), [ref])
        outbox.put_event(event, [(ref.sha256, root / ref.path)])
        events[f"{type_}:{episode}:{n}"] = event
    return events


CAP_CASES = [
    # plan already queued, the new put, expected result, labels of queued events afterwards
    ([("start", "A")], ("update", "A"), PutResult.STORED, ["start:A:0", "update:A:1"]),
    # over the cap: the older update of A is superseded by the new one and goes
    ([("start", "A"), ("update", "A")], ("update", "A"), PutResult.STORED, ["start:A:0", "update:A:2"]),
    # an end supersedes the update too
    ([("start", "A"), ("update", "A")], ("end", "A"), PutResult.STORED, ["start:A:0", "end:A:2"]),
    # nothing superseded: a new update of another episode is refused
    ([("start", "A"), ("update", "A")], ("update", "B"), PutResult.REFUSED, ["start:A:0", "update:A:1"]),
    # ... but a start is never refused, even over the cap
    (
        [("start", "A"), ("update", "A")],
        ("start", "B"),
        PutResult.STORED_OVER_CAP,
        ["start:A:0", "update:A:1", "start:B:2"],
    ),
    # start and end events are never dropped
    (
        [("start", "A"), ("end", "A")],
        ("end", "B"),
        PutResult.STORED_OVER_CAP,
        ["start:A:0", "end:A:1", "end:B:2"],
    ),
]


@pytest.mark.parametrize(("queued", "new", "expected", "remaining"), CAP_CASES)
def test_disk_cap_policy(
    tmp_path: Path,
    queued: list[tuple[str, str]],
    new: tuple[str, str],
    expected: PutResult,
    remaining: list[str],
) -> None:
    # Room for two events with their images (about 5,000 + 1,000 bytes each), not three.
    with open_outbox(tmp_path / "o.db", max_bytes=13_000) as outbox:
        events = _fill(outbox, tmp_path, queued)
        seq_before = outbox.next_seq()
        ref = make_image(tmp_path, "new.jpg", size=5000)
        episode = next(
            (e.episode_id for k, e in events.items() if k.split(":")[1] == new[1]), uuid.uuid4().hex
        )
        event = make_event(new[0], episode, [ref])
        events[f"{new[0]}:{new[1]}:{len(queued)}"] = event
        assert outbox.put_event(event, [(ref.sha256, tmp_path / ref.path)]) is expected
        queued_ids = [i.ref for i in outbox.lease(100) if i.kind is ItemKind.EVENT]
        assert queued_ids == [events[label].event_id for label in remaining]
        # every queued event still has its image queued before it
        kinds = [i.kind for i in outbox.lease(100)]
        assert kinds == [ItemKind.EVIDENCE, ItemKind.EVENT] * len(remaining)
        # a refused event does not use a seq number
        assert outbox.next_seq() == seq_before + (expected is not PutResult.REFUSED)


def test_heartbeats_go_first_under_the_cap(tmp_path: Path) -> None:
    with open_outbox(tmp_path / "o.db", max_bytes=900) as outbox:
        assert outbox.put_heartbeat(make_heartbeat()) is PutResult.STORED
        assert outbox.put_event(make_event(), []) is PutResult.STORED  # 756 + 201 bytes: heartbeat dropped
        assert outbox.latest_heartbeat() is None
        assert outbox.stats.dropped_heartbeats == 1
        assert outbox.put_event(make_event(), []) is PutResult.STORED_OVER_CAP
        assert outbox.put_heartbeat(make_heartbeat()) is PutResult.REFUSED
        assert outbox.depth() == 2


# -- order across reopen (hypothesis) ---------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(["start", "update", "end"])),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=20)),
        st.tuples(st.just("reopen"), st.just(0)),
    ),
    max_size=25,
)


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS)
def test_order_and_seq_survive_reopen(ops: list[tuple[str, object]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "o.db"
        outbox = open_outbox(path)
        expected: list[tuple[str, int]] = []  # (event id, seq) still queued, in order
        seq = 0
        try:
            for op, arg in ops:
                if op == "put":
                    event = make_event(str(arg))
                    outbox.put_event(event, [])
                    seq += 1
                    expected.append((event.event_id, seq))
                elif op == "ack" and expected:
                    event_id, _ = expected.pop(int(arg) % len(expected))  # type: ignore[call-overload]
                    assert outbox.ack("event", event_id) == 1
                elif op == "reopen":
                    outbox.close()
                    outbox = open_outbox(path)
            outbox.close()
            outbox = open_outbox(path)
            assert [(i.ref, i.seq) for i in outbox.lease(1000)] == expected
        finally:
            outbox.close()


# -- SIGKILL mid-stream -----------------------------------------------------------------------

CHILD = """
import sys, uuid
from pathlib import Path
from tests.edge.test_outbox import make_event, open_outbox
outbox = open_outbox(Path(sys.argv[1]))
while True:
    event = make_event()
    outbox.put_event(event, [])
    print(event.event_id, flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_every_committed_event_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    committed: list[str] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 30
        while len(committed) < 300 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            committed.append(line.strip())
    finally:
        child.kill()  # SIGKILL, mid-put
        child.wait(timeout=10)
    assert child.stdout is not None
    committed += child.stdout.read().split()  # printed before the kill, not yet read
    assert len(committed) >= 300, "the child did not write"
    with open_outbox(path) as outbox:
        items = outbox.lease(100_000)
    ids = [item.ref for item in items]
    # every event reported committed is there, in order; at most one more (committed, not yet printed)
    assert ids[: len(committed)] == committed
    assert len(ids) - len(committed) in (0, 1)
    assert [item.seq for item in items] == list(range(1, len(items) + 1))
