"""Frame sources: files, stills folders, live readers with fake captures, and real unreachable streams."""

from __future__ import annotations

import os
import socket
import threading
import time
from contextlib import nullcontext as does_not_raise
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from curbwatch.edge.sources import (
    LiveSource,
    RtspSource,
    SourceConfig,
    SourceOpenError,
    SourceReadError,
    StillsFolderSource,
    VideoFileSource,
    WebcamSource,
    _RateLimiter,
    open_source,
    redact_url,
    source_kind,
    still_timestamp,
)

T0 = datetime(2026, 11, 27, 8, 15, tzinfo=UTC).timestamp()


def make_video(path: Path, frames: int = 20, fps: float = 10.0, size_wh: tuple[int, int] = (64, 48)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size_wh)
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((size_wh[1], size_wh[0], 3), (i * 10) % 256, np.uint8))
    writer.release()
    return path


def write_jpg(path: Path, value: int = 128) -> Path:
    ok, data = cv2.imencode(".jpg", np.full((24, 32, 3), value, np.uint8))
    assert ok
    path.write_bytes(data.tobytes())
    return path


class FakeClock:
    """Epoch-seconds clock that only moves when told (or when FakeSleep sleeps)."""

    def __init__(self, now: float = T0, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        value = self.now
        self.now += self.step
        return value


class FakeSleep:
    """Records requested delays, advances the clock, and runs a hook (e.g. close the source)."""

    def __init__(self, clock: FakeClock | None = None, on_call=None) -> None:
        self.delays: list[float] = []
        self.clock = clock
        self.on_call = on_call

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.now += seconds
        if self.on_call is not None:
            self.on_call(len(self.delays))


class FakeCapture:
    """Yields ``frames`` numbered images as fast as asked, then fails (or blocks until released)."""

    def __init__(self, frames: int, block_after: bool = False) -> None:
        self.frames = frames
        self.block_after = block_after  # like a live camera gone quiet: read blocks, then times out
        self.produced = 0
        self.released = threading.Event()

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.produced >= self.frames:
            if self.block_after:
                self.released.wait(0.3)
            return False, None
        self.produced += 1
        return True, np.full((8, 8, 3), self.produced - 1, np.uint8)

    def release(self) -> None:
        self.released.set()


class ClosedCapture:
    def isOpened(self) -> bool:
        return False

    def read(self) -> tuple[bool, None]:
        return False, None

    def release(self) -> None:
        pass


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.002)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/Streaming/1", "rtsp://***:***@10.0.0.5:554/Streaming/1"),
        ("rtsps://user:p@ss/w0rd@cam.local/live", "rtsps://***:***@cam.local/live"),
        ("rtsp://onlyuser@10.0.0.5/s", "rtsp://***:***@10.0.0.5/s"),
        (
            "http://10.0.0.9/snap.jpg?user=admin&password=secret&ch=1",
            "http://10.0.0.9/snap.jpg?user=***&password=***&ch=1",
        ),
        ("rtsp://10.0.0.5/stream", "rtsp://10.0.0.5/stream"),
        ("open failed: rtsp://admin:hunter2@cam/s refused", "open failed: rtsp://***:***@cam/s refused"),
        ("/videos/cam1.mp4", "/videos/cam1.mp4"),
    ],
)
def test_redact_url_hides_credentials(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "hunter2" not in redact_url(url) and "secret" not in redact_url(url)


def test_source_kind(tmp_path: Path) -> None:
    assert source_kind("rtsp://cam/1") == "stream"
    assert source_kind("HTTPS://cam/mjpg") == "stream"
    assert source_kind("webcam:0") == "webcam"
    assert source_kind("stills:/x") == "stills"
    assert source_kind(str(tmp_path)) == "stills"
    assert source_kind(str(tmp_path / "a.mp4")) == "file"


@pytest.mark.parametrize(
    ("fields", "expectation"),
    [
        ({"url": "a.mp4"}, does_not_raise()),
        ({"url": "a.mp4", "timezone": "Mars/Olympus"}, pytest.raises(ValidationError)),
        ({"url": "a.mp4", "reconnect_initial_s": 5, "reconnect_max_s": 1}, pytest.raises(ValidationError)),
        ({"url": "webcam:front"}, pytest.raises(ValidationError)),
        ({"url": "a.mp4", "fps": 0}, pytest.raises(ValidationError)),
        ({"url": "a.mp4", "colour": "red"}, pytest.raises(ValidationError)),
    ],
)
def test_source_config_validation(fields: dict, expectation) -> None:
    with expectation:
        SourceConfig(**fields)


@pytest.mark.parametrize(
    ("fps", "stamps", "admitted"),
    [
        (None, [0.0, 0.01, 0.02], [True, True, True]),
        (5.0, [i / 29.97 for i in range(13)], [i in (0, 6, 12) for i in range(13)]),
        (5.0, [0.0, 0.2001, 0.3999, 0.6002], [True, True, True, True]),  # jitter at the cap keeps all
        (5.0, [0.0, 0.1333, 0.2667, 0.4, 0.5333, 0.6667, 0.8], [True, False, True, True, False, True, True]),
        (5.0, [0.0, 10.0, 10.05, 10.2], [True, True, False, True]),  # gap: no burst afterwards
        (5.0, [5.0, 1.0, 1.1, 1.2], [True, True, False, True]),  # clock jumped back: restart
    ],
)
def test_rate_limiter(fps: float | None, stamps: list[float], admitted: list[bool]) -> None:
    limiter = _RateLimiter(fps)
    assert [limiter.admit(ts) for ts in stamps] == admitted


def test_video_file_timestamps_from_start_time(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=20, fps=10.0)
    config = SourceConfig(
        url=str(path), start_time=datetime(2026, 11, 27, 9, 15), timezone="Europe/Amsterdam"
    )
    with VideoFileSource(config, "cam1") as source:
        frames = list(source)
        assert source.read() is None  # end of stream stays ended
        status = source.status
    assert [f.index for f in frames] == list(range(20))
    assert [f.camera_id for f in frames] == ["cam1"] * 20
    np.testing.assert_allclose([f.ts - T0 for f in frames], np.arange(20) * 0.1, atol=1e-6)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert (status.state, status.frames_read, status.fps) == ("ended", 20, pytest.approx(10.0))


def test_video_file_default_start_is_mtime_and_replays_identically(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=5)
    os.utime(path, (T0, T0))
    first = [f.ts for f in VideoFileSource(SourceConfig(url=str(path)), "cam1")]
    again = [f.ts for f in VideoFileSource(SourceConfig(url=str(path)), "cam1")]
    assert first == again and first[0] == pytest.approx(T0)


def test_video_file_fps_cap_drops_by_timestamp(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip30.mp4", frames=60, fps=30.0)
    source = VideoFileSource(SourceConfig(url=str(path), fps=5.0, start_time=datetime(2026, 1, 1)), "cam1")
    frames = list(source)
    assert len(frames) == 10
    assert [f.index for f in frames] == list(range(10))
    assert np.diff([f.ts for f in frames]).min() >= 0.19
    assert source.status.frames_skipped == 50 and source.status.fps == pytest.approx(5.0, rel=0.02)


def test_video_file_realtime_paces_with_injected_sleep(tmp_path: Path) -> None:
    path = make_video(tmp_path / "clip.mp4", frames=11, fps=10.0)
    clock = FakeClock()
    sleep = FakeSleep(clock)
    frames = list(VideoFileSource(SourceConfig(url=str(path), realtime=True), "c", clock=clock, sleep=sleep))
    assert len(frames) == 11
    assert sum(sleep.delays) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8).tobytes(),
        "truncated",
    ],
    ids=["empty", "random-bytes", "truncated-mp4"],
)
def test_corrupt_video_raises_open_error(tmp_path: Path, content) -> None:
    if content == "truncated":
        whole = make_video(tmp_path / "whole.mp4", frames=30).read_bytes()
        content = whole[: len(whole) // 2]
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(SourceOpenError, match=r"bad\.mp4"):
        VideoFileSource(SourceConfig(url=str(path)), "cam1")


def test_missing_video_raises_open_error(tmp_path: Path) -> None:
    with pytest.raises(SourceOpenError, match="not found"):
        open_source(SourceConfig(url=str(tmp_path / "nope.mp4")), "cam1")


@pytest.mark.parametrize(
    ("relpath", "count"),
    [("degirum-traffic/Traffic.mp4", 335), ("intel-sample-videos/person-bicycle-car-detection.gif", 41)],
)
def test_real_videos_have_increasing_timestamps(data_dir: Path, relpath: str, count: int) -> None:
    config = SourceConfig(url=str(data_dir / relpath), start_time=datetime(2026, 11, 27, 8, 15, tzinfo=UTC))
    with open_source(config, "real") as source:
        assert isinstance(source, VideoFileSource)
        stamps = [frame.ts for frame in source]
    assert len(stamps) == count
    assert stamps[0] == pytest.approx(T0)
    assert np.all(np.diff(stamps) > 0)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("20261127T081500Z.jpg", T0),
        ("20261127T091500+0100.jpg", T0),
        ("20261127T091500.jpg", T0),  # naive: read in Europe/Amsterdam (UTC+1 in November)
        ("2026-11-27_09-15-00.jpg", T0),
        ("2026-11-27T08:15:00Z.png", T0),
        ("IMG_20261127_091500.jpg", T0),
        ("cam1_20261127091500123.jpg", T0 + 0.123),
        (f"{int(T0)}.jpg", T0),
        (f"snap_{int(T0 * 1000) + 250}.jpg", T0 + 0.25),
        ("front-door.jpg", None),
        ("20261340T250000.jpg", None),  # impossible date
    ],
)
def test_still_timestamp_patterns(name: str, expected: float | None) -> None:
    got = still_timestamp(name, ZoneInfo("Europe/Amsterdam"))
    assert got == (None if expected is None else pytest.approx(expected))


def test_stills_folder_orders_by_name_time_and_skips_corrupt(tmp_path: Path) -> None:
    write_jpg(tmp_path / "cam_20261127081510000.jpg", 30)  # T0 + 10
    write_jpg(tmp_path / "2026-11-27_08-15-05.jpg", 20)  # T0 + 5
    write_jpg(tmp_path / "20261127T081500Z.jpg", 10)  # T0
    write_jpg(tmp_path / "no_time.jpg", 40)  # mtime
    os.utime(tmp_path / "no_time.jpg", (T0 + 20, T0 + 20))
    (tmp_path / "20261127T081502Z.jpg").write_bytes(b"not an image at all")
    good = (tmp_path / "20261127T081500Z.jpg").read_bytes()
    (tmp_path / "20261127T081503Z.jpg").write_bytes(good[: len(good) // 2])  # half-uploaded
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(SourceConfig(url=f"stills:{tmp_path}"), "cam1") as source:
        assert isinstance(source, StillsFolderSource)
        frames = list(source)
        status = source.status
    assert [f.ts - T0 for f in frames] == pytest.approx([0, 5, 10, 20])
    assert [int(f.image[0, 0, 0]) for f in frames] == pytest.approx([10, 20, 30, 40], abs=2)
    assert (status.files_rejected, status.frames_read, status.state) == (2, 4, "ended")


def test_stills_empty_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(SourceOpenError, match="no image files"):
        StillsFolderSource(SourceConfig(url=str(tmp_path)), "cam1")


def test_stills_follow_picks_up_new_files_once_settled(tmp_path: Path) -> None:
    write_jpg(tmp_path / "20261127T081500Z.jpg")
    clock = FakeClock()

    def on_poll(n: int) -> None:
        if n == 1:
            write_jpg(tmp_path / "20261127T081505Z.jpg")
            write_jpg(tmp_path / "20261127T081400Z.jpg")  # older than what was delivered

    sleep = FakeSleep(clock, on_poll)
    source = StillsFolderSource(
        SourceConfig(url=str(tmp_path), follow=True), "cam1", clock=clock, sleep=sleep
    )
    assert source.read().ts == pytest.approx(T0)
    assert source.read(timeout_s=10).ts == pytest.approx(T0 + 5)
    assert len(sleep.delays) == 2  # seen once, then taken when its size was unchanged
    with pytest.raises(SourceReadError):
        source.read(timeout_s=3)
    assert source.status.files_rejected == 1
    source.close()
    assert source.read() is None


@pytest.mark.parametrize(("policy", "delivered"), [("drop_oldest", 9), ("drop_newest", 0)])
def test_live_reader_keeps_one_frame_and_counts_drops(policy: str, delivered: int) -> None:
    capture = FakeCapture(frames=10, block_after=True)
    clock = FakeClock(step=0.01)
    config = SourceConfig(url="rtsp://cam/1", drop_policy=policy)
    source = LiveSource(config, "cam1", lambda: capture, clock=clock, sleep=FakeSleep())
    wait_until(lambda: source.status.frames_read == 10)
    frame = source.read(timeout_s=1.0)
    assert int(frame.image[0, 0, 0]) == delivered
    assert frame.ts == pytest.approx(T0 + 0.01 * delivered)
    assert source.status.frames_dropped == 9
    assert source.status.state == "streaming"
    with pytest.raises(SourceReadError):
        source.read(timeout_s=0.02)  # nothing newer is waiting: no stale frame is replayed
    source.close()
    assert capture.released.is_set()
    assert source.read() is None and source.status.state == "ended"


def test_live_reader_reconnects_with_backoff_and_resets_after_frames() -> None:
    captures = iter([ClosedCapture(), ClosedCapture(), FakeCapture(frames=3)])
    states: list[str] = []

    def factory():
        capture = next(captures, None)
        if capture is None:
            raise OSError("connection refused by rtsp://admin:hunter2@10.0.0.5/s")
        return capture

    holder: list[LiveSource] = []

    def on_sleep(n: int) -> None:
        wait_until(lambda: bool(holder))  # the thread may sleep before the constructor returns
        states.append(holder[0].status.state)
        if n == 9:
            holder[0].close()  # from the reader thread itself: must not deadlock

    sleep = FakeSleep(on_call=on_sleep)
    config = SourceConfig(url="rtsp://admin:hunter2@10.0.0.5/s", reconnect_initial_s=1, reconnect_max_s=30)
    source = LiveSource(config, "cam1", factory, clock=FakeClock(), sleep=sleep)
    holder.append(source)
    wait_until(lambda: len(sleep.delays) >= 9)
    source.close()
    # two failed opens (1, 2), frames read -> back to 1, then failures double up to the cap
    assert sleep.delays == [1, 2, 1, 2, 4, 8, 16, 30, 30]
    assert set(states) == {"reconnecting"}
    status = source.status
    assert (status.reconnects, status.frames_read, status.state) == (9, 3, "ended")
    assert "hunter2" not in status.last_error and "***" in status.last_error


def test_webcam_source_uses_injected_capture() -> None:
    capture = FakeCapture(frames=1, block_after=True)
    with WebcamSource(SourceConfig(url="webcam:0"), "desk", capture_factory=lambda: capture) as source:
        assert source.read(timeout_s=2.0).index == 0


@pytest.fixture
def silent_port():
    """A TCP port on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in held:
        conn.close()


def closed_port() -> int:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


@pytest.mark.parametrize("which", ["silent", "closed"])
def test_unreachable_rtsp_times_out_and_reconnects(silent_port: int, which: str) -> None:
    port = silent_port if which == "silent" else closed_port()
    config = SourceConfig(
        url=f"rtsp://admin:hunter2@127.0.0.1:{port}/live",
        open_timeout_s=1.0,
        read_timeout_s=1.0,
        reconnect_initial_s=60,
        reconnect_max_s=60,
    )
    started = time.monotonic()
    source = open_source(config, "cam1")
    assert isinstance(source, RtspSource)
    wait_until(lambda: source.status.state == "reconnecting", timeout_s=5.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0  # without the open timeout ffmpeg would wait ~30 s on the silent port
    with pytest.raises(SourceReadError):
        source.read(timeout_s=0.05)
    closing = time.monotonic()
    source.close()
    assert time.monotonic() - closing < 1.0  # the back-off wait wakes on close
    assert source.status.reconnects == 1 and "hunter2" not in source.status.last_error
