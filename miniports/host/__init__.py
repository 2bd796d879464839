"""The miniport host: the device's process, which runs its adapter and, per port the
adapter binds, one miniport host for the kernel.

Each host registers with the kernel's bus, answers the port's calls (init,
new_stream, set_state, ...) by calling the miniport, and plays the port's part
inside the process: it feeds render streams' `write` from the kernel's ring
(keeping what a short write left, retrying after ~1 ms or on the next
notify), and when the miniport's ISR calls `notify(group)` it runs the
miniport's half of that group's DPC in PortCls order (the miniport's
`service()` where the port's sink is a member, then `read` until b"" on the
group's capture streams into their rings, the miniport's own sinks, nested
groups), then raises the interrupt on which the kernel runs its half.

One thread runs the loop; `notify` may come from any thread (an rtmidi
callback, an emulated card) and wakes the loop through a pipe.

  device.py   the process: the adapter's start_device, one host per port, exit status
  loop.py     one host: its loop, the kernel's requests, heartbeat, shutdown
  bus.py      the kernel's bus: calls, posted events in order, interrupts
  port.py     the `Port` a miniport sees, and its registry keys
  dpc.py      the miniport's service groups, their timers and DPC runs
  streams.py  each stream's render pump and capture drain, and their rings
  dmus.py     a DirectMusic miniport's streams (IMXF), its allocator and master clock
  calls.py    calling into the miniport: its answers vs. its faults

Run as: python -m miniports.host --runtime DIR --device NAME (--miniport SPEC |
--adapter SPEC) [--options JSON] [--resources JSON]
"""

from miniports.host.bus import KernelBus
from miniports.host.calls import MiniportFault, call_miniport, call_miniport_hook
from miniports.host.device import HostDevice, main
from miniports.host.dpc import NOTIFY_ALL, HostServiceGroup, ServiceGroups
from miniports.host.loop import EXIT_MINIPORT_FAULT, MiniportHost
from miniports.host.port import HostPort, RegistryKeyProxy
from miniports.host.streams import (
    READ_CHUNK,
    RENDER_BATCH_BYTES,
    RETRY_SECONDS,
    HostStream,
    StreamTable,
)

__all__ = [
    "EXIT_MINIPORT_FAULT",
    "NOTIFY_ALL",
    "READ_CHUNK",
    "RENDER_BATCH_BYTES",
    "RETRY_SECONDS",
    "HostDevice",
    "HostPort",
    "HostServiceGroup",
    "HostStream",
    "KernelBus",
    "MiniportFault",
    "MiniportHost",
    "RegistryKeyProxy",
    "ServiceGroups",
    "StreamTable",
    "call_miniport",
    "call_miniport_hook",
    "main",
]
