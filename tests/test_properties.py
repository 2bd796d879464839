"""Pin properties (KSPROPSETID_Pin) and connection properties of an open pin."""

from __future__ import annotations

import pytest

import ksclient
from ipc.ks import (
    KSDATAFORMAT_SUBTYPE_DIRECTMUSIC,
    KSDATAFORMAT_SUBTYPE_MIDI,
    KSDATAFORMAT_SUBTYPE_MIDI_BUS,
    KSDATAFORMAT_TYPE_WILDCARD,
    DataFormat,
    DataRange,
)
from ipc.status import Status

PROBE = """
[[device]]
name = "picky"
miniport = "tests.probe_miniports:FormatProbe"
"""

DMUS = DataRange(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC)
ANY_SUB = DataRange(sub_format=KSDATAFORMAT_TYPE_WILDCARD)


def test_data_intersection_sizes_and_default(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        query = c.data_intersection("loopback", 0, [DataRange()], size=0)
        assert query == {"status": Status.BUFFER_OVERFLOW, "size": 64}
        with pytest.raises(ksclient.KsError) as err:
            c.data_intersection("loopback", 0, [DataRange()], size=10)
        assert err.value.status == Status.BUFFER_TOO_SMALL
        # The loopback has no intersection of its own: the port's default, wildcards
        # filled in from the pin's range, the client's ranges tried in order.
        fmt = c.data_intersection("loopback", 0, [DMUS, ANY_SUB])
        assert fmt == DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_MIDI)
        with pytest.raises(ksclient.NoMatchError):
            c.data_intersection("loopback", 0, [DMUS])


def test_data_intersection_asks_the_miniport_in_order(start_kernel) -> None:
    kernel = start_kernel(PROBE)
    with kernel.connect() as c:
        c.wait_for_filter("picky")
        bus = DataRange(sub_format=KSDATAFORMAT_SUBTYPE_MIDI_BUS)
        # DirectMusic: NO_MATCH from the miniport; then MIDI_BUS: the miniport's answer.
        assert c.data_intersection("picky", 0, [DMUS, bus]) == DataFormat(
            sub_format=KSDATAFORMAT_SUBTYPE_MIDI_BUS)
        # A wildcard: the miniport says NOT_IMPLEMENTED, the port's default decides.
        assert c.data_intersection("picky", 0, [ANY_SUB]) == DataFormat()
        with pytest.raises(ksclient.NoMatchError):
            c.data_intersection("picky", 0, [DMUS])


def test_static_pin_properties(loopback_kernel) -> None:
    with loopback_kernel.connect() as c:
        c.wait_for_filter("loopback")
        interfaces = c.pin_property("loopback", 0, "interfaces")
        assert interfaces == [{"set": "1a8766a0-62ce-11cf-a5d6-28db04c10000", "id": 0,
                               "flags": 0}]
        assert c.pin_property("loopback", 1, "interfaces") == []  # a bridge pin
        mediums = c.pin_property("loopback", 0, "mediums")
        assert mediums[0]["set"] == "4747b320-62ce-11cf-a5d6-28db04c10000"
        assert (c.pin_property("loopback", 0, "constraineddataranges")
                == c.pin_property("loopback", 0, "dataranges"))
        assert c.pin_property("loopback", 0, "physicalconnection") is None
        assert c.pin_property("loopback", 0, "proposedataformat") == DataFormat().to_wire()
        assert c.pin_property("loopback", 0, "proposedataformat", DataFormat().to_wire())
        with pytest.raises(ksclient.NoMatchError):
            c.pin_property("loopback", 0, "proposedataformat",
                           DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC).to_wire())


def test_connection_state_and_dataformat(start_kernel) -> None:
    kernel = start_kernel(PROBE)
    with kernel.connect() as c:
        c.wait_for_filter("picky")
        with c.open_render("picky") as out:
            assert out.connection_property("state") == 0
            out.connection_property("state", 1)
            assert out.connection_property("state") == 1
            out.stop()
            assert out.format == DataFormat()
            # The stream's set_format refuses MIDI_BUS: its status comes back, the format stays.
            with pytest.raises(ksclient.KsError) as err:
                out.set_format(DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_MIDI_BUS))
            assert err.value.status == Status.NOT_SUPPORTED
            assert out.format == DataFormat()
            with pytest.raises(ksclient.NoMatchError):
                out.set_format(DataFormat(sub_format=KSDATAFORMAT_SUBTYPE_DIRECTMUSIC))
            out.set_format(DataFormat())
            assert out.connection_property("time")["time"] == 0
            out.run()
            out.send(b"\x90\x3c\x40")
            position = out.connection_property("position")
            assert set(position) == {"events", "time"}


WIRED = """
[[device]]
name = "loopback"
miniport = "loopback"
physical_connections = [{ pin = 1, to = "other", to_pin = 2 }]

[[device]]
name = "other"
miniport = "loopback"
"""


def test_physical_connections_the_adapter_registered(start_kernel) -> None:
    kernel = start_kernel(WIRED)
    with kernel.connect() as c:
        c.wait_for_filter("loopback")
        assert c.pin_property("loopback", 1, "physicalconnection") == {"filter": "other",
                                                                       "pin": 2}
        assert c.pin_property("loopback", 2, "physicalconnection") is None


def test_bad_physical_connections_are_refused() -> None:
    from kernel.config import ConfigError, parse

    base = {"name": "a", "miniport": "loopback"}
    for wires in ([{"pin": -1, "to": "b", "to_pin": 0}], [{"pin": 0, "to": "b"}],
                  [{"pin": 0, "to": "b", "to_pin": 0, "extra": 1}], "x"):
        with pytest.raises(ConfigError):
            parse({"device": [{**base, "physical_connections": wires}]})
