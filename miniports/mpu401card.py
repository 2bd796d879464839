"""The built-in example adapter: an MPU-401 card with two subdevices and a wire between them.

`adapter = "mpu401card"` in a device's configuration. Its `start_device`:

  "uart"   PcNewPort(CLSID_PortMidi) + PcNewMiniport(CLSID_MiniportDriverUart)
  "dmus"   PcNewPort(CLSID_PortDMus) + PcNewMiniport(DMUS_MINIPORT)
  a physical connection from the UART filter's bridge-out pin (2, its MIDI OUT)
  to the "dmus" filter's bridge-in pin (3, its MIDI IN)

so clients see the filters "<device>" (the UART, registered first) and
"<device>/dmus". DMUS_MINIPORT makes the second subdevice DirectMusic: it is
CLSID_MiniportDriverDMusUART, the built-in DirectMusic UART.

Resources: the card's I/O range(s) and IRQ(s). Subdevice i takes I/O range i
and IRQ i (the last one when there are fewer): with one range both miniports
drive the same address, as Windows' UART and DMusUART share one MPU-401 (each
emulated miniport has its own card behind it). Options: the UART miniport's
options (cable, baud, ...), given to both.
"""

from __future__ import annotations

from typing import Any, Final

from ipc.status import Status, StatusError
from miniports.adapter import (
    Adapter,
    CLSID_PortDMus,
    CLSID_PortMidi,
    DeviceObject,
    pc_new_miniport,
    pc_new_port,
    pc_register_physical_connection,
    pc_register_subdevice,
)
from miniports.contract import ResourceList
from miniports.mpu401.miniport import (
    BRIDGE_IN_PIN,
    BRIDGE_OUT_PIN,
    CLSID_MiniportDriverDMusUART,
    CLSID_MiniportDriverUart,
)

DMUS_MINIPORT: Final = CLSID_MiniportDriverDMusUART
"""The second subdevice's miniport: the built-in DirectMusic UART."""

SUBDEVICES: Final = (
    ("uart", CLSID_PortMidi, CLSID_MiniportDriverUart),
    ("dmus", CLSID_PortDMus, DMUS_MINIPORT),
)


class Mpu401CardAdapter(Adapter):
    """StartDevice of an MPU-401 card: see the module docstring."""

    def __init__(self, **uart_options: Any) -> None:
        self.uart_options = uart_options

    def start_device(self, device: DeviceObject, resources: ResourceList) -> None:
        if not resources.io_ranges:
            raise StatusError(Status.DEVICE_CONFIGURATION_ERROR,
                              "an MPU-401 card needs an I/O range")
        ports = []
        for i, (name, port_clsid, miniport_clsid) in enumerate(SUBDEVICES):
            port = pc_new_port(port_clsid)
            miniport = pc_new_miniport(miniport_clsid, **self.uart_options)
            port.init(device, miniport, _share(resources, i))
            pc_register_subdevice(device, name, port)
            ports.append(port)
        uart, dmus = ports
        pc_register_physical_connection(device, uart, BRIDGE_OUT_PIN, dmus, BRIDGE_IN_PIN)


def _share(resources: ResourceList, i: int) -> ResourceList:
    """Subdevice i's part of the card's resources: I/O range i and IRQ i, or the last."""
    io = resources.io_ranges[min(i, len(resources.io_ranges) - 1)]
    irq = resources.interrupts[min(i, len(resources.interrupts) - 1):][:1]
    return ResourceList((io,), tuple(irq), dict(resources.extra))
