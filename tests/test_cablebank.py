"""The scaling benchmark's device (miniports.testing.cablebank): private cables, each
capture stream serviced through a service group of its own."""

from __future__ import annotations

import pytest

import ksclient
from miniports.testing.cablebank import capture_pin, render_pin

CABLES = """
[[device]]
name = "cables"
miniport = "miniports.testing.cablebank:CableBankMiniport"
options = { cables = 3 }
"""


def test_each_cable_is_private_and_its_interrupts_service_its_own_group(start_kernel) -> None:
    kernel = start_kernel(CABLES)
    with kernel.connect() as c:
        c.wait_for_filter("cables")
        pins = [(c.open_render("cables", render_pin(k)), c.open_capture("cables", capture_pin(k)))
                for k in range(3)]
        for out, inp in pins:
            inp.run()
            out.run()
        # Interleaved sends: every cable has input in flight while the others do.
        sent: list[list[bytes]] = [[], [], []]
        for n in range(20):
            for k, (out, _) in enumerate(pins):
                message = bytes([0x90 | k, n, 1 + k])
                out.send(message)
                sent[k].append(message)
        for k, (_, inp) in enumerate(pins):
            assert [inp.receive(timeout=5.0).data for _ in range(20)] == sent[k]
        for _, inp in pins:
            assert inp.receive_batch(timeout=0.2) == []  # nothing crossed to another cable
        # The port's own group (registered in init) was never notified: each interrupt
        # named the groups of the cables that took input, which hold only their stream.
        assert c.stats()["devices"]["cables"]["services"] == 0
        for out, inp in pins:
            out.close()
            inp.close()
            assert out.lost == 0 and inp.lost == 0


def test_a_cable_refuses_a_second_stream_and_a_wrong_direction(start_kernel) -> None:
    kernel = start_kernel(CABLES)
    with kernel.connect() as c:
        c.wait_for_filter("cables")
        inp = c.open_capture("cables", capture_pin(1))
        with pytest.raises(ksclient.KsError):
            c.open_capture("cables", capture_pin(1))
        with pytest.raises(ksclient.KsError):
            c.open_capture("cables", render_pin(2))
        inp.close()
        # Closed, the cable takes a new capture stream (with a new group of its own).
        again = c.open_capture("cables", capture_pin(1))
        out = c.open_render("cables", render_pin(1))
        again.run()
        out.run()
        out.send(b"\x90\x01\x02")
        assert again.receive(timeout=5.0).data == b"\x90\x01\x02"
        out.close()
        again.close()
