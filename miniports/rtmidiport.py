"""The old name of `miniports.rtmidi.miniport`: `from miniports.rtmidiport import ...` works."""

from miniports.rtmidi.miniport import (
    APIS,
    RtMidiCaptureStream,
    RtMidiMiniport,
    RtMidiRenderStream,
    api_id,
    compiled_apis,
    list_ports,
    match_port,
    no_autostart,
)

__all__ = [
    "APIS",
    "RtMidiCaptureStream",
    "RtMidiMiniport",
    "RtMidiRenderStream",
    "api_id",
    "compiled_apis",
    "list_ports",
    "match_port",
    "no_autostart",
]
