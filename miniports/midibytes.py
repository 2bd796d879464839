"""Cutting a raw MIDI byte stream into whole messages, for miniports whose hardware
sends messages rather than bytes (rtmidi) or must not leave one half sent (a UART).

The kernel's capture parser (`kernel.midiparse`) does the same job on the way
up; miniports cannot import the kernel, so this is their copy of the rules.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["MessageAssembler", "data_bytes"]


def data_bytes(status: int) -> int:
    """Data bytes that follow a channel or system-common status byte."""
    if status < 0xF0:
        return 1 if status & 0xF0 in (0xC0, 0xD0) else 2
    return {0xF1: 1, 0xF2: 2, 0xF3: 1}.get(status, 0)


class MessageAssembler:
    """Cuts a MIDI byte stream into whole messages, across calls.

    `feed(data, send)` calls `send(message)` for each message `data`
    completes and returns how many bytes it consumed. `send` returns False to
    refuse a message ("not now"): feeding stops before the byte that would
    have completed it, so that byte is offered again later, and the state is
    as if feeding had stopped there.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.running = 0
        self.need = 0
        self.in_sysex = False
        self.discarded = 0

    def reset(self) -> None:
        self.discarded += len(self.buf)
        self.buf.clear()
        self.running = 0
        self.need = 0
        self.in_sysex = False

    def feed(self, data: bytes, send: Callable[[bytes], bool]) -> int:
        buf = self.buf
        i, n = 0, len(data)
        while i < n:
            b = data[i]
            if b >= 0xF8:
                if not send(bytes((b,))):
                    return i
            elif self.in_sysex and b < 0x80:
                # Bulk-copy SysEx data up to the next status byte.
                j = i + 1
                while j < n and data[j] < 0x80:
                    j += 1
                buf += data[i:j]
                i = j
                continue
            elif b == 0xF7:
                if self.in_sysex:
                    if not send(bytes(buf) + b"\xf7"):
                        return i
                    buf.clear()
                    self.in_sysex = False
                else:
                    self.discarded += 1
            elif b >= 0x80:
                if buf:
                    # A status byte cuts short an unfinished message or SysEx.
                    self.discarded += len(buf)
                    buf.clear()
                    self.in_sysex = False
                if b == 0xF0:
                    self.in_sysex = True
                    self.running = 0
                    buf.append(b)
                else:
                    need = data_bytes(b)
                    self.running = b if b < 0xF0 else 0
                    if need == 0:
                        if not send(bytes((b,))):
                            return i
                    else:
                        buf.append(b)
                        self.need = need
            elif buf:
                if self.need == 1:
                    if not send(bytes(buf) + bytes((b,))):
                        return i
                    buf.clear()
                else:
                    buf.append(b)
                    self.need -= 1
            elif self.running:
                need = data_bytes(self.running)
                if need == 1:
                    if not send(bytes((self.running, b))):
                        return i
                else:
                    buf += bytes((self.running, b))
                    self.need = need - 1
            else:
                self.discarded += 1
            i += 1
        return n
