"""Tests of ipc.doorbell and ipc.channel, including real producer processes."""

from __future__ import annotations

import json
import os
import select
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from ipc.channel import (
    ChannelReader,
    ChannelWriter,
    channel_paths,
    create_channel_files,
    remove_channel_files,
)
from ipc.doorbell import Doorbell, NotAFifoError
from ipc.ring import Record, RingCorrupt

ROOT = Path(__file__).resolve().parents[1]


def readable(fd: int, timeout: float = 0.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


@pytest.fixture
def bell_path(tmp_path: Path) -> Path:
    return tmp_path / "bell"


def test_doorbell_ring_and_drain(bell_path: Path) -> None:
    with Doorbell.create(bell_path) as waiter, Doorbell.attach(bell_path) as ringer:
        assert stat.S_ISFIFO(os.stat(bell_path).st_mode)
        assert stat.S_IMODE(os.stat(bell_path).st_mode) == 0o600
        assert waiter.drain() == 0
        assert not readable(waiter.fileno())
        ringer.ring()
        ringer.ring()
        assert readable(waiter.fileno())
        assert waiter.drain() >= 1
        assert waiter.drain() == 0
        assert not readable(waiter.fileno())
    waiter.unlink()
    waiter.unlink()
    assert not bell_path.exists()


def test_doorbell_with_zmq_poller(bell_path: Path) -> None:
    with Doorbell.create(bell_path) as waiter, Doorbell.attach(bell_path) as ringer:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        try:
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(waiter.fileno(), zmq.POLLIN)
            assert poller.poll(0) == []
            ringer.ring()
            assert poller.poll(5000) == [(waiter.fileno(), zmq.POLLIN)]
            assert waiter.drain() == 1
            assert poller.poll(0) == []
        finally:
            sock.close(linger=0)
            ctx.term()
        waiter.unlink()


def test_doorbell_full_pipe_is_fine(bell_path: Path) -> None:
    with Doorbell.create(bell_path) as bell:
        for _ in range(70_000):  # more than a default 64 KiB pipe buffer
            bell.ring()
        drained = bell.drain()
        assert 4096 <= drained < 70_000
        assert bell.drain() == 0
        bell.unlink()


def test_doorbell_survives_peer_close(bell_path: Path) -> None:
    with Doorbell.create(bell_path) as waiter:
        peer = Doorbell.attach(bell_path)
        peer.ring()
        peer.close()
        peer.close()
        assert waiter.drain() == 1
        waiter.ring()  # no reader other than ourselves: still no EPIPE
        assert waiter.drain() == 1
        waiter.unlink()
    with pytest.raises(ValueError):
        waiter.fileno()


def test_doorbell_attach_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Doorbell.attach(tmp_path / "missing")
    regular = tmp_path / "regular"
    regular.write_bytes(b"")
    with pytest.raises(NotAFifoError, match="not a FIFO"):
        Doorbell.attach(regular)
    with pytest.raises(FileExistsError):
        Doorbell.create(regular)
    link = tmp_path / "link"
    with Doorbell.create(tmp_path / "fifo") as bell:
        link.symlink_to(bell.path)
        with pytest.raises(NotAFifoError):
            Doorbell.attach(link)
        bell.unlink()


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "stream"
    create_channel_files(path, 4096)
    yield path
    remove_channel_files(path)


@pytest.fixture
def ends(base: Path) -> Iterator[tuple[ChannelWriter, ChannelReader]]:
    with ChannelWriter.open(base) as writer, ChannelReader.open(base) as reader:
        yield writer, reader


def test_channel_files(tmp_path: Path) -> None:
    base = tmp_path / "s.1.out"
    create_channel_files(base, 8192)
    ring_path, data_path, space_path = channel_paths(base)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "s.1.out.data",
        "s.1.out.ring",
        "s.1.out.space",
    ]
    assert stat.S_ISREG(os.stat(ring_path).st_mode)
    for path in (data_path, space_path):
        assert stat.S_ISFIFO(os.stat(path).st_mode)
    for path in (ring_path, data_path, space_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(FileExistsError):
        create_channel_files(base, 8192)
    assert ring_path.exists()  # the failed call removed nothing it did not make
    remove_channel_files(base)
    remove_channel_files(base)
    assert list(tmp_path.iterdir()) == []


def test_create_channel_files_is_all_or_nothing(tmp_path: Path) -> None:
    base = tmp_path / "s"
    _, _, space_path = channel_paths(base)
    space_path.write_bytes(b"in the way")
    with pytest.raises(FileExistsError):
        create_channel_files(base, 4096)
    assert list(tmp_path.iterdir()) == [space_path]
    with pytest.raises(ValueError):
        create_channel_files(tmp_path / "t", 1000)
    assert list(tmp_path.iterdir()) == [space_path]


def test_open_missing_channel(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ChannelWriter.open(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):
        ChannelReader.open(tmp_path / "nothing")


def test_open_corrupt_channel(base: Path) -> None:
    ring_path, _, _ = channel_paths(base)
    os.truncate(ring_path, 100)
    with pytest.raises(RingCorrupt):
        ChannelReader.open(base)


def test_send_and_receive(ends: tuple[ChannelWriter, ChannelReader]) -> None:
    writer, reader = ends
    assert reader.receive_many() == []
    assert writer.send(b"\x90\x3c\x40", timestamp=5, flags=1)
    assert writer.send_many([(6, 0, b"\x80\x3c\x00"), (7, 0, b"")]) == 2
    assert reader.receive_many(max_records=2) == [
        Record(5, 1, b"\x90\x3c\x40"),
        Record(6, 0, b"\x80\x3c\x00"),
    ]
    assert reader.receive_many() == [Record(7, 0, b"")]
    assert writer.wakeups_sent == 0  # nobody was asleep


def test_one_wakeup_per_sleep(ends: tuple[ChannelWriter, ChannelReader]) -> None:
    writer, reader = ends
    assert reader.prepare_to_sleep()
    assert not readable(reader.data_fileno())
    for i in range(50):
        assert writer.send(bytes([i]))
    assert writer.send_many([(0, 0, b"x")] * 10) == 10
    assert writer.wakeups_sent == 1
    assert readable(reader.data_fileno())
    assert len(reader.receive_many()) == 60
    assert reader.wakeups_received == 1
    assert not readable(reader.data_fileno())
    # Data arriving between arming and sleeping: prepare_to_sleep says do not sleep.
    assert writer.send(b"y")
    assert not reader.prepare_to_sleep()
    assert writer.send(b"z")
    assert writer.wakeups_sent == 1
    assert reader.receive_many() == [Record(0, 0, b"y"), Record(0, 0, b"z")]


def test_wait_helpers_with_timeouts(ends: tuple[ChannelWriter, ChannelReader]) -> None:
    writer, reader = ends
    start = time.monotonic()
    assert not reader.wait(0.05)
    assert not reader.wait(0)
    assert time.monotonic() - start < 2
    writer.send(b"a")
    assert reader.wait(None)
    assert reader.wait(0)
    assert reader.receive_many() == [Record(0, 0, b"a")]

    big = bytes(writer.ring.max_payload)
    while writer.send(big):
        pass
    assert not writer.wait_for_space(len(big), 0.05)
    assert not writer.wait_for_space(len(big), 0)
    assert writer.wait_for_space(0, 0)  # a small record still fits

    timer = threading.Timer(0.1, reader.receive_many, kwargs={"max_records": 1})
    timer.start()
    try:
        assert writer.wait_for_space(len(big), 10)
    finally:
        timer.join()
    assert writer.space_wakeups_received == 1
    assert reader.space_wakeups_sent == 1
    assert writer.send(big)
    assert writer.missed_wakeups == 0
    assert reader.missed_wakeups == 0


def test_wait_wakes_on_send_from_another_thread(
    ends: tuple[ChannelWriter, ChannelReader],
) -> None:
    writer, reader = ends
    timer = threading.Timer(0.1, writer.send, args=(b"late",))
    timer.start()
    try:
        assert reader.wait(10)
    finally:
        timer.join()
    assert reader.wakeups_received == 1
    assert reader.receive_many() == [Record(0, 0, b"late")]


def test_event_loop_waiting_for_space(ends: tuple[ChannelWriter, ChannelReader]) -> None:
    writer, reader = ends
    assert not writer.prepare_to_wait_for_space(100)
    while writer.send(bytes(1000)):
        pass
    assert writer.prepare_to_wait_for_space(1000)
    assert not readable(writer.space_fileno())
    assert len(reader.receive_many(max_records=1)) == 1
    assert readable(writer.space_fileno())
    assert writer.send(bytes(1000))  # also drains the doorbell and disarms
    assert not readable(writer.space_fileno())
    assert writer.space_wakeups_received == 1


def test_discard_all_wakes_producer(ends: tuple[ChannelWriter, ChannelReader]) -> None:
    writer, reader = ends
    assert writer.send_many([(0, 0, bytes(1000))] * 5) == 4
    assert writer.prepare_to_wait_for_space(1000)
    assert reader.discard_all() == 4
    assert readable(writer.space_fileno())
    assert writer.wait_for_space(1000, 0)


# The producer runs in a fresh interpreter (like a real client or miniport process).
# Record i carries i in its first 4 bytes and a length that varies with i.
PRODUCER = r"""
import json, random, sys
from ipc.channel import ChannelWriter

base, count, seed, max_batch, max_extra = sys.argv[1:6]
count, max_batch, max_extra = int(count), int(max_batch), int(max_extra)
rng = random.Random(int(seed))
writer = ChannelWriter.open(base)
batches = send_calls = 0
i = 0
while i < count:
    n = min(rng.randint(1, max_batch), count - i)
    batch = [
        (j, j & 0xFFFF, j.to_bytes(4, "little") + bytes([j & 0xFF]) * (j * 7 % (max_extra + 1)))
        for j in range(i, i + n)
    ]
    done = 0
    while done < n:
        done += writer.send_many(batch[done:])
        send_calls += 1
        if done < n and not writer.wait_for_space(len(batch[done][2]), 30.0):
            sys.exit("no space for 30 s")
    batches += 1
    i += n
print(json.dumps({
    "batches": batches,
    "send_calls": send_calls,
    "wakeups_sent": writer.wakeups_sent,
    "space_waits": writer.space_waits,
    "space_wakeups_received": writer.space_wakeups_received,
    "missed_wakeups": writer.missed_wakeups,
}))
writer.close()
"""


def expected_payload(i: int, max_extra: int) -> bytes:
    return i.to_bytes(4, "little") + bytes([i & 0xFF]) * (i * 7 % (max_extra + 1))


def start_producer(base: Path, count: int, max_batch: int, max_extra: int) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    args = [str(base), str(count), "1234", str(max_batch), str(max_extra)]
    return subprocess.Popen(
        [sys.executable, "-c", PRODUCER, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_producer(proc: subprocess.Popen[str]) -> dict[str, int]:
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    stats: dict[str, int] = json.loads(out)
    return stats


def check(record: Record, i: int, max_extra: int) -> None:
    assert record.timestamp == i
    assert record.flags == i & 0xFFFF
    assert record.data == expected_payload(i, max_extra)


def test_cross_process_stream_coalesces_wakeups(tmp_path: Path) -> None:
    count, max_extra = 200_000, 8
    base = tmp_path / "fast"
    create_channel_files(base, 1 << 16)
    try:
        with ChannelReader.open(base) as reader:
            proc = start_producer(base, count, max_batch=128, max_extra=max_extra)
            try:
                poller = zmq.Poller()
                poller.register(reader.data_fileno(), zmq.POLLIN)
                received = sleeps = 0
                deadline = time.monotonic() + 120
                while received < count:
                    assert time.monotonic() < deadline, f"stalled after {received} records"
                    records = reader.receive_many()
                    for record in records:
                        check(record, received, max_extra)
                        received += 1
                    if not records and reader.prepare_to_sleep():
                        sleeps += 1
                        # The safety timeout: nothing is lost if a wake-up is.
                        poller.poll(1000)
                        if proc.poll() not in (None, 0):
                            break  # finish_producer reports its stderr
            finally:
                stats = finish_producer(proc)
            assert reader.receive_many() == []
        # At most one wake-up per sleep and per published batch, whatever the timing.
        assert reader.wakeups_received <= sleeps
        assert stats["wakeups_sent"] <= stats["send_calls"]
        assert stats["send_calls"] < count / 10
        assert stats["wakeups_sent"] < count / 10
        assert reader.wakeups_received < count / 10
    finally:
        remove_channel_files(base)


def test_cross_process_slow_consumer_loses_nothing(tmp_path: Path) -> None:
    count, max_extra = 4000, 300
    base = tmp_path / "slow"
    create_channel_files(base, 4096)
    try:
        with ChannelReader.open(base) as reader:
            proc = start_producer(base, count, max_batch=32, max_extra=max_extra)
            try:
                received = 0
                deadline = time.monotonic() + 120
                while received < count:
                    assert time.monotonic() < deadline, f"stalled after {received} records"
                    if not reader.wait(1.0):
                        if proc.poll() not in (None, 0):
                            break  # finish_producer reports its stderr
                        continue
                    for record in reader.receive_many(max_records=3):
                        check(record, received, max_extra)
                        received += 1
                    time.sleep(0.0002)
            finally:
                stats = finish_producer(proc)
            assert reader.receive_many() == []
        # The ring holds about a dozen records, so the producer must have waited.
        assert stats["space_waits"] > 0
        assert reader.space_wakeups_sent > 0
    finally:
        remove_channel_files(base)
