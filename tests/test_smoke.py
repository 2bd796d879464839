from __future__ import annotations

import ksclient


def test_loopback_round_trip(loopback_kernel) -> None:
    with loopback_kernel.connect() as client:
        f = client.wait_for_filter("loopback")
        assert [p.name for p in f.pins] == ["MIDI Out", "Bridge Out", "Bridge In", "MIDI In"]
        with client.open_render("loopback") as out, client.open_capture("loopback") as inp:
            inp.run()
            out.run()
            out.send([0x90, 60, 100])
            msg = inp.receive(timeout=5)
            assert msg.data == bytes([0x90, 60, 100])
            assert msg.timestamp <= ksclient.now()
