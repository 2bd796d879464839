"""Tests of ipc.ring: API contract, a model-based test, and hostile-peer robustness."""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import signal
import stat
import struct
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ipc.ring import (
    HEADER_SIZE,
    KIND_DATA,
    KIND_PAD,
    RECORD_HEADER_SIZE,
    InvalidRecord,
    Record,
    Ring,
    RingCorrupt,
    record_size,
)

OFF_WRITE = 64
OFF_READ = 128
PRODUCER_ARMED = 256
U64 = struct.Struct("<Q")
REC = struct.Struct("<qIHH")


def poke(path: Path, offset: int, data: bytes) -> None:
    """Write into the ring file behind the mapping's back, as a peer process would."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def set_indices(path: Path, write: int, read: int) -> None:
    poke(path, OFF_WRITE, U64.pack(write))
    poke(path, OFF_READ, U64.pack(read))


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Fail instead of hanging; SIGALRM is only usable from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError(f"call took longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def ring_path(tmp_path: Path) -> Path:
    return tmp_path / "r.ring"


@pytest.fixture
def pair(ring_path: Path) -> Iterator[tuple[Ring, Ring]]:
    """A producer and a consumer mapping of one fresh ring of capacity 4096."""
    producer = Ring.create(ring_path, 4096)
    consumer = Ring.attach(ring_path)
    yield producer, consumer
    consumer.close()
    producer.close()
    producer.unlink()


def test_create_makes_private_file_of_right_size(ring_path: Path) -> None:
    with Ring.create(ring_path, 8192) as ring:
        st_ = os.stat(ring_path)
        assert stat.S_IMODE(st_.st_mode) == 0o600
        assert st_.st_size == HEADER_SIZE + 8192
        assert ring.capacity == 8192
        assert ring.max_payload == 2048
        assert ring.path == ring_path
        assert ring.free_bytes() == 8192
        assert not ring.readable()
        assert ring.dropped == 0


@pytest.mark.parametrize("capacity", [0, 1, 2048, 4095, 4097, 6000, 3 << 12, 1 << 31])
def test_create_rejects_bad_capacity(ring_path: Path, capacity: int) -> None:
    with pytest.raises(ValueError):
        Ring.create(ring_path, capacity)
    assert not ring_path.exists()


def test_create_refuses_existing_file(ring_path: Path) -> None:
    ring_path.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        Ring.create(ring_path, 4096)
    assert ring_path.read_bytes() == b"someone else's"


def test_attach_missing_file(ring_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Ring.attach(ring_path)


def _valid_file(path: Path, capacity: int = 4096) -> None:
    Ring.create(path, capacity).close()


def test_attach_rejects_truncated_file(ring_path: Path) -> None:
    _valid_file(ring_path, 8192)
    os.truncate(ring_path, HEADER_SIZE + 8192 - 8)
    with pytest.raises(RingCorrupt, match="does not match"):
        Ring.attach(ring_path)
    os.truncate(ring_path, HEADER_SIZE + 100)
    with pytest.raises(RingCorrupt, match="too short"):
        Ring.attach(ring_path)
    os.truncate(ring_path, 0)
    with pytest.raises(RingCorrupt, match="too short"):
        Ring.attach(ring_path)


def test_attach_rejects_oversized_file(ring_path: Path) -> None:
    _valid_file(ring_path)
    os.truncate(ring_path, HEADER_SIZE + 8192)
    with pytest.raises(RingCorrupt, match="size"):
        Ring.attach(ring_path)


def test_attach_rejects_wrong_magic(ring_path: Path) -> None:
    _valid_file(ring_path)
    poke(ring_path, 0, b"NOTARING")
    with pytest.raises(RingCorrupt, match="magic"):
        Ring.attach(ring_path)


def test_attach_rejects_wrong_version(ring_path: Path) -> None:
    _valid_file(ring_path)
    poke(ring_path, 8, struct.pack("<I", 99))
    with pytest.raises(RingCorrupt, match="version"):
        Ring.attach(ring_path)


@pytest.mark.parametrize("capacity", [4096 + 8, 6144, 2048, 0, 1 << 40])
def test_attach_rejects_bad_capacity(ring_path: Path, capacity: int) -> None:
    _valid_file(ring_path)
    poke(ring_path, 16, struct.pack("<Q", capacity))
    # Make the size match the claimed capacity where feasible, so that only the
    # capacity check can reject it.
    if 4096 <= capacity < 1 << 20:
        os.truncate(ring_path, HEADER_SIZE + capacity)
    with pytest.raises(RingCorrupt, match="capacity"):
        Ring.attach(ring_path)


def test_attach_rejects_directory(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Ring.attach(tmp_path)


def test_round_trip_and_close(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    assert producer.try_put(b"\x90\x40\x7f", timestamp=-5, flags=0xFFFF)
    assert producer.try_put(bytearray(b"xy"), timestamp=1 << 62)
    assert producer.try_put(memoryview(b"abcdef")[1:4])
    assert producer.try_put(b"")
    assert consumer.readable()
    assert consumer.get() == Record(-5, 0xFFFF, b"\x90\x40\x7f")
    assert consumer.get_many() == [
        Record(1 << 62, 0, b"xy"),
        Record(0, 0, b"bcd"),
        Record(0, 0, b""),
    ]
    assert consumer.get() is None
    assert consumer.get_many() == []
    assert not consumer.readable()
    assert producer.free_bytes() == 4096
    consumer.close()
    consumer.close()
    assert consumer.closed
    with pytest.raises(ValueError):
        consumer.get()


def test_memoryview_of_wider_items_counts_bytes(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    words = memoryview(struct.pack("<3I", 1, 2, 3)).cast("I")
    assert producer.try_put(words)
    assert producer.put_many([(0, 0, words)]) == 1
    assert [r.data for r in consumer.get_many()] == [bytes(words)] * 2


def test_try_put_validates_arguments(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    assert producer.try_put(bytes(producer.max_payload))
    with pytest.raises(ValueError):
        producer.try_put(bytes(producer.max_payload + 1))
    for flags in (-1, 0x10000):
        with pytest.raises(ValueError):
            producer.try_put(b"x", flags=flags)
    for ts in (1 << 63, -(1 << 63) - 1):
        with pytest.raises(ValueError):
            producer.try_put(b"x", timestamp=ts)
    assert len(consumer.get_many()) == 1


def test_put_many_invalid_record_publishes_the_ones_before(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    batch = [(1, 0, b"a"), (2, 0, b"b"), (3, 1 << 16, b"c"), (4, 0, b"d")]
    with pytest.raises(InvalidRecord) as info:
        producer.put_many(batch)
    assert info.value.written == 2
    assert [r.data for r in consumer.get_many()] == [b"a", b"b"]
    with pytest.raises(InvalidRecord) as info:
        producer.put_many([(0, 0, b"x"), (0, 0, bytes(producer.max_payload + 1))])
    assert info.value.written == 1
    with pytest.raises(InvalidRecord):
        producer.put_many([(1 << 63, 0, b"x")])
    assert [r.data for r in consumer.get_many()] == [b"x"]


def test_put_many_stops_when_full(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    payload = bytes(1000)  # 1016 bytes a record: four fit into 4096
    batch = [(i, 0, payload) for i in range(10)]
    assert producer.put_many(batch) == 4
    assert producer.put_many(batch) == 0
    assert not producer.try_put(b"x" * 100)
    assert producer.free_bytes() == 4096 - 4 * 1016
    assert [r.timestamp for r in consumer.get_many(max_records=2)] == [0, 1]
    assert producer.put_many(batch[4:]) == 2
    assert [r.timestamp for r in consumer.get_many()] == [2, 3, 4, 5]
    assert producer.put_many(iter([])) == 0


def test_get_many_limits(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    assert producer.put_many([(i, 0, bytes(10)) for i in range(10)]) == 10
    with pytest.raises(ValueError):
        consumer.get_many(0)
    with pytest.raises(ValueError):
        consumer.get_many(max_bytes=-1)
    assert len(consumer.get_many(max_records=3)) == 3
    assert len(consumer.get_many(max_bytes=25)) == 2
    # One record is returned even if it alone exceeds the byte budget.
    assert len(consumer.get_many(max_bytes=0)) == 1
    assert len(consumer.get_many(max_bytes=30)) == 3
    assert consumer.discard_all() == 1
    assert consumer.discard_all() == 0
    assert producer.free_bytes() == 4096


def test_wrap_with_padding_record(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    # Three 1016-byte records leave 1048 bytes before the end of the data area.
    assert producer.put_many([(i, 0, bytes(1000)) for i in range(3)]) == 3
    assert len(consumer.get_many()) == 3
    assert producer.try_put(b"p" * 1024, timestamp=7)  # 1040 bytes: fits, 8 remain
    assert producer.try_put(b"q" * 100, timestamp=8)  # implicit 8-byte skip, then wrap
    assert producer.free_bytes() == 4096 - 1040 - 8 - 120
    assert consumer.get() == Record(7, 0, b"p" * 1024)
    assert consumer.get() == Record(8, 0, b"q" * 100)
    assert producer.free_bytes() == 4096
    # Now at position 120: fill to leave a gap of 40 bytes, then force a padding record.
    assert producer.put_many([(0, 0, bytes(1000))] * 3 + [(0, 0, bytes(872))]) == 4
    assert consumer.discard_all() == 4
    assert producer.try_put(b"r" * 100, timestamp=9)
    with open(producer.path, "rb") as f:
        f.seek(HEADER_SIZE + 4096 - 40)
        assert REC.unpack(f.read(RECORD_HEADER_SIZE)) == (0, 24, 0, KIND_PAD)
        f.seek(HEADER_SIZE)
        assert REC.unpack(f.read(RECORD_HEADER_SIZE)) == (9, 100, 0, KIND_DATA)
    assert consumer.get_many() == [Record(9, 0, b"r" * 100)]


def test_maximal_record_always_fits_into_empty_ring(ring_path: Path) -> None:
    with Ring.create(ring_path, 4096) as ring:
        big = bytes(ring.max_payload)
        for offset in range(0, 4096, 8):
            index = 4096 * 3 + offset
            set_indices(ring_path, index, index)
            assert ring.try_put(big), offset
            assert ring.get() == Record(0, 0, big)


def test_armed_flags(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    assert not producer.take_consumer_wakeup()
    assert consumer.arm_consumer()
    assert producer.try_put(b"x")
    assert producer.take_consumer_wakeup()
    assert not producer.take_consumer_wakeup()
    # Data already there: arming fails and leaves the flag clear.
    assert not consumer.arm_consumer()
    assert not producer.take_consumer_wakeup()
    consumer.get_many()
    assert consumer.arm_consumer()
    consumer.disarm_consumer()
    assert not producer.take_consumer_wakeup()

    # 4064 bytes used: a 16-byte record fits in the last 32, a 120-byte one does not.
    assert producer.put_many([(0, 0, bytes(1000))] * 4) == 4
    assert not producer.arm_producer(0)
    assert not consumer.take_producer_wakeup()
    assert producer.arm_producer(100)
    assert consumer.take_producer_wakeup()
    assert not consumer.take_producer_wakeup()
    assert producer.arm_producer(100)
    consumer.get()
    assert consumer.take_producer_wakeup()
    assert not producer.arm_producer(100)
    assert not consumer.take_producer_wakeup()
    producer.arm_producer(100)
    producer.disarm_producer()
    assert not consumer.take_producer_wakeup()
    with pytest.raises(ValueError):
        producer.arm_producer(producer.max_payload + 1)


def test_dropped_counter(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    producer.add_dropped(3)
    producer.add_dropped(0)
    producer.add_dropped(4)
    assert consumer.dropped == 7
    with pytest.raises(ValueError):
        producer.add_dropped(-1)


def test_unlink_is_idempotent(ring_path: Path) -> None:
    ring = Ring.create(ring_path, 4096)
    ring.unlink()
    ring.unlink()
    assert not ring_path.exists()
    assert ring.try_put(b"still mapped")
    ring.close()


class RingMachine(RuleBasedStateMachine):
    """A producer and a consumer mapping of one ring against a deque and a byte model."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self.producer: Ring | None = None
        self.consumer: Ring | None = None
        self.model: deque[tuple[int, int, bytes, int]] = deque()
        self.wr = 0
        self.rd = 0
        self.capacity = 0

    @initialize(
        capacity=st.sampled_from([4096, 8192, 16384, 65536]),
        lap=st.one_of(st.just(0), st.integers(1, 1 << 40)),
        offset=st.one_of(st.sampled_from([0, -8, -16, -24, -32]), st.integers(0, 1 << 13)),
    )
    def create(self, capacity: int, lap: int, offset: int) -> None:
        path = self.directory / f"m{next(_machine_ids)}.ring"
        self.producer = Ring.create(path, capacity)
        self.consumer = Ring.attach(path)
        self.capacity = capacity
        start = (lap * capacity + offset % capacity) & ~7
        set_indices(path, start, start)
        self.wr = self.rd = start

    def teardown(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        if self.producer is not None:
            self.producer.close()
            self.producer.unlink()

    def _span(self, length: int) -> int:
        size = record_size(length)
        tail = self.capacity - self.wr % self.capacity
        return size if size <= tail else tail + size

    def _fits(self, length: int) -> bool:
        return self._span(length) <= self.capacity - (self.wr - self.rd)

    def _payload(self, data: st.DataObject) -> bytes:
        assert self.producer is not None
        length = data.draw(
            st.one_of(
                st.integers(0, 24),
                st.integers(0, self.producer.max_payload),
                st.just(self.producer.max_payload),
            ),
            label="length",
        )
        return random.Random(data.draw(st.integers(0, 1 << 32))).randbytes(length)

    def _model_put(self, timestamp: int, flags: int, payload: bytes) -> None:
        span = self._span(len(payload))
        self.model.append((timestamp, flags, payload, span))
        self.wr += span

    def _model_take(self) -> Record:
        timestamp, flags, payload, span = self.model.popleft()
        self.rd += span
        return Record(timestamp, flags, payload)

    @rule(
        data=st.data(),
        timestamp=st.integers(-(1 << 63), (1 << 63) - 1),
        flags=st.integers(0, 0xFFFF),
    )
    def put(self, data: st.DataObject, timestamp: int, flags: int) -> None:
        assert self.producer is not None
        payload = self._payload(data)
        expected = self._fits(len(payload))
        assert self.producer.try_put(payload, timestamp, flags) is expected
        if expected:
            self._model_put(timestamp, flags, payload)

    @rule(data=st.data(), count=st.integers(0, 40))
    def put_batch(self, data: st.DataObject, count: int) -> None:
        assert self.producer is not None
        batch = [(i, i & 0xFFFF, self._payload(data)) for i in range(count)]
        expected = 0
        for timestamp, flags, payload in batch:
            if not self._fits(len(payload)):
                break
            self._model_put(timestamp, flags, payload)
            expected += 1
        assert self.producer.put_many(batch) == expected

    @rule()
    def get(self) -> None:
        assert self.consumer is not None
        expected = self._model_take() if self.model else None
        assert self.consumer.get() == expected

    @rule(
        max_records=st.integers(1, 100),
        max_bytes=st.one_of(st.none(), st.integers(0, 20000)),
    )
    def get_batch(self, max_records: int, max_bytes: int | None) -> None:
        assert self.consumer is not None
        expected: list[Record] = []
        total = 0
        while self.model and len(expected) < max_records:
            length = len(self.model[0][2])
            if max_bytes is not None and expected and total + length > max_bytes:
                break
            total += length
            expected.append(self._model_take())
        assert self.consumer.get_many(max_records, max_bytes) == expected

    @rule()
    def discard(self) -> None:
        assert self.consumer is not None
        assert self.consumer.discard_all() == len(self.model)
        self.model.clear()
        self.rd = self.wr

    @rule()
    def arm_consumer(self) -> None:
        assert self.consumer is not None and self.producer is not None
        armed = self.consumer.arm_consumer()
        assert armed is (not self.model)
        assert self.producer.take_consumer_wakeup() is armed
        assert not self.producer.take_consumer_wakeup()

    @rule(data=st.data())
    def arm_producer(self, data: st.DataObject) -> None:
        assert self.consumer is not None and self.producer is not None
        need = data.draw(st.integers(0, self.producer.max_payload))
        armed = self.producer.arm_producer(need)
        assert armed is not self._fits(need)
        assert self.consumer.take_producer_wakeup() is armed

    @precondition(lambda self: self.producer is not None)
    @invariant()
    def accounting(self) -> None:
        assert self.producer is not None and self.consumer is not None
        assert self.producer.free_bytes() == self.capacity - (self.wr - self.rd)
        assert self.consumer.readable() is bool(self.model)


_machine_ids = itertools.count()


def test_ring_against_model(tmp_path: Path) -> None:
    run_state_machine_as_test(
        lambda: RingMachine(tmp_path),
        settings=settings(max_examples=80, stateful_step_count=60, deadline=None),
    )


def _fill(producer: Ring, consumer: Ring, rnd: random.Random) -> None:
    """Leave the ring mid-lap with a few records of assorted sizes readable."""
    for _ in range(rnd.randint(0, 6)):
        producer.put_many(
            [(rnd.randint(-99, 99), 0, rnd.randbytes(rnd.randint(0, 700))) for _ in range(5)]
        )
        consumer.get_many(rnd.randint(1, 6))
    producer.put_many(
        [(1, 2, rnd.randbytes(rnd.randint(0, 300))) for _ in range(rnd.randint(0, 8))]
    )


_REGIONS = {
    "write index": (OFF_WRITE, 8),
    "read index": (OFF_READ, 8),
    "both indices": (OFF_WRITE, OFF_READ + 8 - OFF_WRITE),
    "header prefix": (0, 24),
    "flags and counter": (192, 136),
    "data": (HEADER_SIZE, 4096),
}


def _garble(path: Path, data: st.DataObject) -> None:
    region = data.draw(st.sampled_from(sorted(_REGIONS)), label="region")
    start, length = _REGIONS[region]
    offset = start + data.draw(st.integers(0, length - 1), label="offset")
    junk = data.draw(
        st.one_of(
            st.binary(min_size=1, max_size=32),
            st.integers(0, (1 << 64) - 1).map(U64.pack),
            # Plausible-looking record headers are the interesting kind of garbage.
            st.builds(
                REC.pack,
                st.integers(-(1 << 63), (1 << 63) - 1),
                st.one_of(st.integers(0, 4200), st.integers(0, (1 << 32) - 1)),
                st.integers(0, 0xFFFF),
                st.sampled_from([KIND_DATA, KIND_PAD, 0, 0xFFFF]),
            ),
        ),
        label="junk",
    )
    poke(path, offset, junk[: HEADER_SIZE + 4096 - offset])


def _check_records(records: list[Record], max_payload: int) -> None:
    for record in records:
        assert isinstance(record, Record)
        assert isinstance(record.data, bytes) and len(record.data) <= max_payload
        assert 0 <= record.flags <= 0xFFFF


_example_ids = itertools.count()


@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), seed=st.integers(0, 1 << 32))
def test_garbage_never_breaks_the_consumer(tmp_path: Path, data: st.DataObject, seed: int) -> None:
    path = tmp_path / f"g{next(_example_ids)}.ring"
    producer = Ring.create(path, 4096)
    consumer = Ring.attach(path)
    try:
        _fill(producer, consumer, random.Random(seed))
        for _ in range(data.draw(st.integers(1, 3), label="hits")):
            _garble(path, data)
        # Every readable record holds at least 16 bytes, so the reader must have
        # stopped or failed after this many calls.
        for _ in range(4096 // 16 + 2):
            with time_limit(5):
                try:
                    consumer.readable()
                    records = consumer.get_many(data.draw(st.integers(1, 50), label="batch"))
                except RingCorrupt:
                    break
            _check_records(records, consumer.max_payload)
            if not records:
                break
        else:
            pytest.fail("reader kept returning records")
        with time_limit(5):
            with contextlib.suppress(RingCorrupt):
                consumer.discard_all()
            with contextlib.suppress(RingCorrupt):
                Ring.attach(path).close()
    finally:
        consumer.close()
        producer.close()
        path.unlink()


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    seed=st.integers(0, 1 << 32),
    read_index=st.one_of(
        st.integers(0, (1 << 64) - 1),
        st.integers(-4200, 4200),
        st.integers(-40, 40).map(lambda k: k * 8),
    ),
)
def test_garbage_read_index_never_breaks_the_producer(
    tmp_path: Path, data: st.DataObject, seed: int, read_index: int
) -> None:
    path = tmp_path / f"p{next(_example_ids)}.ring"
    producer = Ring.create(path, 4096)
    consumer = Ring.attach(path)
    try:
        _fill(producer, consumer, random.Random(seed))
        with open(path, "rb") as f:
            f.seek(OFF_WRITE)
            (write_index,) = U64.unpack(f.read(8))
        # Small values are taken relative to the write index, to hit the boundaries.
        if abs(read_index) <= 4200:
            read_index = (write_index - read_index) % (1 << 64)
        poke(path, OFF_READ, U64.pack(read_index))
        calls = [
            lambda: producer.free_bytes(),
            lambda: producer.try_put(b"x" * data.draw(st.integers(0, 1024))),
            lambda: producer.put_many([(0, 0, b"y" * 200)] * 30),
            lambda: producer.arm_producer(data.draw(st.integers(0, 1024))),
            lambda: producer.has_room(100),
        ]
        for call in calls:
            with time_limit(5), contextlib.suppress(RingCorrupt):
                call()
    finally:
        consumer.close()
        producer.close()
        path.unlink()


@pytest.mark.parametrize(
    ("write", "read", "what"),
    [
        (4096 * 2 + 8, 8, "inconsistent indices"),  # more than capacity readable
        (8, 16, "inconsistent indices"),  # read ahead of write
        (12, 0, "inconsistent indices"),  # misaligned
    ],
)
def test_bad_indices_raise(pair: tuple[Ring, Ring], write: int, read: int, what: str) -> None:
    producer, consumer = pair
    set_indices(producer.path, write, read)
    with pytest.raises(RingCorrupt, match=what):
        consumer.get_many()
    with pytest.raises(RingCorrupt, match=what):
        producer.try_put(b"x")


def test_bad_record_headers_raise(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    assert producer.try_put(b"hello")
    poke(producer.path, HEADER_SIZE, REC.pack(0, 5, 0, 0x1234))
    with pytest.raises(RingCorrupt, match="kind 0x1234 at index 0"):
        consumer.get()
    poke(producer.path, HEADER_SIZE, REC.pack(0, 9, 0, KIND_DATA))
    with pytest.raises(RingCorrupt, match="length 9"):
        consumer.get()
    poke(producer.path, HEADER_SIZE, REC.pack(0, 1 << 31, 0, KIND_DATA))
    with pytest.raises(RingCorrupt, match="length"):
        consumer.get()
    poke(producer.path, HEADER_SIZE, REC.pack(0, 8, 0, KIND_PAD))
    with pytest.raises(RingCorrupt, match="padding"):
        consumer.get()


def test_padding_must_reach_the_end(pair: tuple[Ring, Ring]) -> None:
    producer, consumer = pair
    assert producer.put_many([(0, 0, bytes(1000))] * 4) == 4
    assert consumer.discard_all() == 4
    assert producer.try_put(b"x" * 100)  # 32 bytes left: a padding record, then wrap
    poke(producer.path, HEADER_SIZE + 4064, REC.pack(0, 8, 0, KIND_PAD))
    with pytest.raises(RingCorrupt, match="bad padding at index 4064: length 8"):
        consumer.get()
    poke(producer.path, HEADER_SIZE + 4064, REC.pack(0, 16, 0, KIND_PAD))
    assert consumer.get() == Record(0, 0, b"x" * 100)


def test_take_wakeup_in_the_same_call(pair: tuple[Ring, Ring]) -> None:
    """put_many/get_many(take_wakeup=True) take the peer's wake-up exactly as
    take_consumer_wakeup/take_producer_wakeup would, and only after moving records."""
    producer, consumer = pair
    # Not armed: nothing taken. Armed: taken once, and the flag is cleared.
    assert producer.put_many([(0, 0, b"a")], take_wakeup=True) == 1
    assert not producer.consumer_wakeup
    assert consumer.get_many() and consumer.arm_consumer()
    assert producer.put_many([], take_wakeup=True) == 0
    assert not producer.consumer_wakeup  # nothing written: the wake-up stays for later
    assert producer.put_many([(0, 0, b"b")], take_wakeup=True) == 1
    assert producer.consumer_wakeup and not producer.take_consumer_wakeup()
    producer.consumer_wakeup = False
    # The batch loop (several records) takes it too.
    assert len(consumer.get_many()) == 1 and consumer.arm_consumer()
    assert producer.put_many([(0, 0, b"c"), (0, 0, b"d")], take_wakeup=True) == 2
    assert producer.consumer_wakeup and not producer.take_consumer_wakeup()
    assert len(consumer.get_many()) == 2

    # The producer's side (its armed flag set as arm_producer sets it).
    armed = struct.pack("@I", 1)
    assert producer.try_put(b"e")
    poke(producer.path, PRODUCER_ARMED, armed)
    assert consumer.get_many(take_wakeup=True)  # the one-record path
    assert consumer.producer_wakeup and not consumer.take_producer_wakeup()
    consumer.producer_wakeup = False
    assert producer.put_many([(0, 0, b"f"), (0, 0, b"g")]) == 2
    poke(producer.path, PRODUCER_ARMED, armed)
    assert len(consumer.get_many(take_wakeup=True)) == 2  # the loop
    assert consumer.producer_wakeup and not consumer.take_producer_wakeup()
    consumer.producer_wakeup = False
    # An empty ring takes nothing: the wake-up stays for the get that makes room.
    poke(producer.path, PRODUCER_ARMED, armed)
    assert consumer.get_many(take_wakeup=True) == []
    assert not consumer.producer_wakeup and consumer.take_producer_wakeup()
