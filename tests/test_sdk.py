"""The client SDK: callbacks, iteration, asyncio, errors, device removal, kernel gone."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import pytest

import ksclient
import ksclient.aio
from ipc.status import Status

FAILING_INIT = """
[[device]]
name = "dead"
miniport = "tests.probe_miniports:FailingInit"

[[device]]
name = "loopback"
miniport = "loopback"
restart = { limit = 1, backoff = 0.05 }
"""


def test_iteration_callback_and_nowait(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        with c.open_render("loopback") as out, c.open_capture("loopback") as inp:
            inp.run()
            out.run()
            with pytest.raises(ksclient.WouldBlock):
                inp.receive_nowait()
            assert not inp.poll(0)
            out.send_many([bytes([0x90, i, 1]) for i in range(5)])
            got = []
            for msg in inp:
                got.append(msg.data[1])
                if len(got) == 5:
                    break
            assert got == [0, 1, 2, 3, 4]
            seen: list[int] = []
            done = threading.Event()

            def on_message(msg: ksclient.MidiMessage) -> None:
                seen.append(msg.data[1])
                if len(seen) == 3:
                    done.set()

            inp.set_callback(on_message)
            out.send_many([bytes([0x80, i, 0]) for i in range(3)])
            assert done.wait(5)
            inp.set_callback(None)
            assert seen == [0, 1, 2]
            import mido

            out.send(mido.Message("note_on", note=1, velocity=2))
            assert inp.receive(timeout=5).to_mido() == mido.Message("note_on", note=1, velocity=2)
        with pytest.raises(ksclient.ClosedError):
            inp.receive_nowait()
        with pytest.raises(ksclient.ClosedError):
            out.send(b"\x90\x3c\x40")


def test_asyncio_flavour(loopback_kernel) -> None:
    async def main() -> list[bytes]:
        async with await ksclient.aio.connect(loopback_kernel.runtime) as k:
            await k.wait_for_filter("loopback")
            inp = await k.open_capture("loopback")
            out = await k.open_render("loopback")
            await inp.run()
            await out.run()
            await out.send(b"\x90\x3c\x40")
            await out.send_many([b"\x80\x3c\x00", b"\xf8"])
            got = [(await inp.receive(timeout=5)).data for _ in range(3)]
            with pytest.raises(ksclient.KsTimeoutError):
                await inp.receive(timeout=0.1)
            await out.close()
            await inp.close()
            return got

    assert asyncio.run(main()) == [b"\x90\x3c\x40", b"\x80\x3c\x00", b"\xf8"]


def test_device_removal_and_arrival(start_kernel) -> None:
    kernel = start_kernel(FAILING_INIT)
    with kernel.connect() as c:
        c.wait_for_filter("loopback")
        stats = c.stats()["devices"]
        assert stats["dead"]["state"] == "failed" and "ACK" in stats["dead"]["last_exit"]
        assert [f.id for f in c.filters()] == ["loopback"]
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        inp.run()
        out.run()
        os.kill(stats["loopback"]["pid"], signal.SIGKILL)
        event = c.next_event(timeout=10)
        assert (event.kind, event.filter) == ("removal", "loopback")
        assert "signal 9" in event.reason
        with pytest.raises(ksclient.DeviceRemovedError) as err:
            inp.receive(timeout=5)
        assert err.value.status == Status.DEVICE_REMOVED
        assert isinstance(err.value, ksclient.BrokenError)
        with pytest.raises(ksclient.DeviceRemovedError):
            out.send(b"\x90\x3c\x40")
        out.close()
        inp.close()
        c.wait_for_filter("loopback", timeout=10)  # restarted by the PnP manager
        with c.open_render("loopback") as out, c.open_capture("loopback") as inp:
            inp.run()
            out.run()
            out.send(b"\x90\x3c\x40")
            assert inp.receive(timeout=5).data == b"\x90\x3c\x40"


def test_kernel_gone(loopback_kernel) -> None:
    c = loopback_kernel.connect()
    c.wait_for_filter("loopback")
    inp = c.open_capture("loopback")
    inp.run()
    loopback_kernel.proc.send_signal(signal.SIGKILL)
    loopback_kernel.proc.wait()
    with pytest.raises(ksclient.KernelGoneError):
        c.filters()
    c.close()
    # Its miniport notices the kernel is gone and exits on its own (checked by no_leaks);
    # the dead kernel's runtime directory is removed by the next kernel, or here.
    import shutil

    shutil.rmtree(loopback_kernel.runtime, ignore_errors=True)


def test_connect_without_a_kernel(runtime_dir) -> None:
    with pytest.raises(ksclient.KernelGoneError):
        ksclient.connect(runtime_dir, timeout=0.2)


def test_a_client_scribbling_on_its_ring_fails_only_its_pin(loopback_kernel) -> None:
    import mmap

    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        inp.run()
        out.run()
        # The ring is a memfd the client holds: scribble through its descriptor.
        with mmap.mmap(out._channel.ring.fileno(), 0) as mm:
            mm[64:72] = (12345).to_bytes(8, "little")  # a write index that cannot be
        out._channel._data_bell.ring()  # wake the kernel as a send would
        event = c.next_event(timeout=10)
        assert (event.kind, event.status) == ("pin_error", Status.IO_DEVICE_ERROR)
        assert "corrupt ring" in event.reason
        out.close()
        with c.open_render("loopback") as out2:  # the kernel and the device carry on
            out2.run()
            out2.send(b"\x90\x3c\x40")
            assert inp.receive(timeout=5).data == b"\x90\x3c\x40"
        inp.close()


def test_blocked_receive_notices_the_kernel_is_gone(loopback_kernel) -> None:
    import shutil
    import time

    c = loopback_kernel.connect()
    c.wait_for_filter("loopback")
    inp = c.open_capture("loopback")
    inp.run()
    threading.Timer(0.3, loopback_kernel.proc.kill).start()
    start = time.monotonic()
    with pytest.raises(ksclient.KernelGoneError):
        inp.receive(timeout=30)
    assert time.monotonic() - start < 10
    loopback_kernel.proc.wait()
    c.close()
    shutil.rmtree(loopback_kernel.runtime, ignore_errors=True)


def test_receive_many_takes_a_batch_in_order(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        out, inp = c.open_render("loopback"), c.open_capture("loopback")
        inp.run()
        out.run()
        messages = [bytes([0x90, i % 128, 1 + i % 100]) for i in range(3000)]
        out.send_many(messages)
        got: list[bytes] = []
        while len(got) < len(messages):
            batch = inp.receive_many(1000, timeout=10)
            assert 0 < len(batch) <= 1000
            got += [m.data for m in batch]
        assert got == messages
        assert inp.receive_many(timeout=0.05) == []
