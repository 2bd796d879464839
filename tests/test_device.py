"""Device properties and the registry store, asked for by a real miniport; InterruptSync."""

from __future__ import annotations

import json

from ipc.status import Status
from miniports.base import InterruptSync, InterruptSyncMode

REGISTRY = """
[[device]]
name = "regprobe"
miniport = "tests.probe_miniports:RegistryProbe"
properties = { friendly_name = "Probe Device" }
"""


def test_device_properties_and_registry(start_kernel) -> None:
    kernel = start_kernel(REGISTRY)
    with kernel.connect() as client:
        client.wait_for_filter("regprobe")
        with client.open_render("regprobe") as cmd, client.open_capture("regprobe") as inp:
            inp.run()
            cmd.run()
            cmd.send_raw(b"\x07")
            msg = inp.receive(timeout=10)
    result = json.loads(msg.data[1:-1])
    assert result == {
        "needed": len("Probe Device\0".encode("utf-16-le")),
        "friendly_name": "Probe Device",
        "volume": 90,
        "values": ["Names", "Volume"],
        "delete_with_subkey": Status.INVALID_DEVICE_REQUEST,
        "deleted": Status.OBJECT_NAME_NOT_FOUND,
        "unknown": Status.INVALID_PARAMETER,
    }


def test_interrupt_sync_modes() -> None:
    calls: list[str] = []
    pending = {"a": 0, "b": 2}

    def routine(name: str):
        def isr() -> bool:
            calls.append(name)
            if pending[name]:
                pending[name] -= 1
                return True
            return False

        return isr

    normal = InterruptSync(InterruptSyncMode.NORMAL)
    normal.register_service_routine(routine("b"))
    normal.register_service_routine(routine("a"), first=True)
    assert normal.interrupt()  # a does not claim, b does: stop there
    assert calls == ["a", "b"]
    calls.clear()
    pending.update(a=1, b=1)
    every = InterruptSync(InterruptSyncMode.ALL)
    every.register_service_routine(routine("a"))
    every.register_service_routine(routine("b"))
    assert every.interrupt() and calls == ["a", "b"]
    calls.clear()
    pending.update(a=0, b=2)
    repeat = InterruptSync(InterruptSyncMode.REPEAT)
    repeat.register_service_routine(routine("a"))
    repeat.register_service_routine(routine("b"))
    assert repeat.interrupt() and calls == ["a", "b", "a", "b", "a", "b"]
    assert not repeat.interrupt() and repeat.unclaimed == 1
    assert repeat.call_synchronized_routine(lambda x: x * 2, 21) == 42
