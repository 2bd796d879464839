"""The client's trace points: where a message's path starts (send) and ends (receive).

Called only when `ipc.trace.ON`; see ipc/trace.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from ipc import trace
from ipc.ring import Record


def sent(start: int, handle: int, first: int, count: int) -> None:
    """Records `first`.. of render pin `handle` went into its ring (the write began at
    `start`, before anyone could read them): their paths start."""
    if count:
        trace.complete(
            "send", "render", start, {"pin": handle, "records": count},
            [trace.render_flow_id(handle, first + i) for i in range(count)], "s",
        )


def received(handle: int, records: Sequence[Record]) -> None:
    """Capture pin `handle` took these records from its ring: their paths end."""
    if records:
        stamps = dict.fromkeys(r.timestamp for r in records)
        trace.complete(
            "receive", "capture", trace.now(), {"pin": handle, "records": len(records)},
            [trace.capture_flow_id(t) for t in stamps], "f",
        )
