"""Adapters used by the tests, loaded by spec (`tests.probe_adapters:Class`).

They are ordinary adapters written against `miniports.adapter`, as a third
party would write them; what they saw comes back to the test through a JSON
file named in their options (`report`), written by the device's process.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from ipc.status import Status, StatusError
from miniports.adapter import (
    Adapter,
    CLSID_PortMidi,
    DeviceObject,
    pc_new_miniport,
    pc_new_port,
    pc_register_physical_connection,
    pc_register_physical_connection_from_external,
    pc_register_physical_connection_to_external,
    pc_register_subdevice,
)
from miniports.contract import ResourceList
from miniports.loopback import LoopbackMiniport
from miniports.testing.faults import FaultInjector


def _status(call: Any) -> str:
    """The outcome of a PortCls call: "SUCCESS", or the status it raised."""
    try:
        call()
    except StatusError as exc:
        return Status.name_of(exc.status).removeprefix("STATUS_")
    return "SUCCESS"


class ContractProbe(Adapter):
    """Two loopback subdevices ("a", "b"), every PortCls call's outcome in `report`, and
    wires a:1 -> b:0, a:0 -> external `to` pin 5, external `from` pin 6 -> b:1."""

    def __init__(self, report: str, to: str = "elsewhere", fault_b: str | None = None) -> None:
        self.report = Path(report)
        self.to = to
        self.fault_b = fault_b

    def start_device(self, device: DeviceObject, resources: ResourceList) -> None:
        seen: dict[str, Any] = {"resources": resources.to_wire()}
        seen["new_port_unknown"] = _status(lambda: pc_new_port("no-such-clsid"))
        seen["new_miniport_unknown"] = _status(lambda: pc_new_miniport("no-such-clsid"))
        a = pc_new_port(CLSID_PortMidi)
        b = pc_new_port("CLSID_PortDMus")
        seen["register_before_init"] = _status(lambda: pc_register_subdevice(device, "a", a))
        seen["init_not_a_miniport"] = _status(lambda: a.init(device, object()))
        a.init(device, LoopbackMiniport())
        seen["init_again"] = _status(lambda: a.init(device, LoopbackMiniport()))
        miniport_b: Any = LoopbackMiniport()
        if self.fault_b is not None:
            miniport_b = FaultInjector(fault=self.fault_b, after_seconds=1.0, control=False)
        b.init(device, miniport_b)
        seen["filter_a"] = pc_register_subdevice(device, "a", a)
        seen["wire_before_register"] = _status(
            lambda: pc_register_physical_connection(device, a, 1, b, 0))
        seen["bad_name"] = _status(lambda: pc_register_subdevice(device, "no/slash", b))
        seen["same_name"] = _status(lambda: pc_register_subdevice(device, "a", b))
        seen["filter_b"] = pc_register_subdevice(device, "b", b)
        seen["register_twice"] = _status(lambda: pc_register_subdevice(device, "c", b))
        seen["wire_no_such_pin"] = _status(
            lambda: pc_register_physical_connection(device, a, 1, b, 9))
        pc_register_physical_connection(device, a, 1, b, 0)
        seen["wire_pin_taken"] = _status(
            lambda: pc_register_physical_connection(device, a, 1, b, 1))
        pc_register_physical_connection_to_external(device, a, 0, self.to, 5)
        pc_register_physical_connection_from_external(device, "outside", 6, b, 1)
        self.report.write_text(json.dumps(seen))


class FailingStart(Adapter):
    """One loopback subdevice, then a failed start (a StatusError) or, with
    `crash`, an adapter that raises something else (a fault)."""

    def __init__(self, crash: bool = False) -> None:
        self.crash = crash

    def start_device(self, device: DeviceObject, resources: ResourceList) -> None:
        port = pc_new_port(CLSID_PortMidi)
        port.init(device, LoopbackMiniport())
        pc_register_subdevice(device, "first", port)
        if self.crash:
            raise RuntimeError("the adapter is broken")
        raise StatusError(Status.IO_DEVICE_ERROR, "the second codec does not answer")


class HangingStart(Adapter):
    """One loopback subdevice, then a start_device that never returns."""

    def start_device(self, device: DeviceObject, resources: ResourceList) -> None:
        port = pc_new_port(CLSID_PortMidi)
        port.init(device, LoopbackMiniport())
        pc_register_subdevice(device, "first", port)
        threading.Event().wait()
