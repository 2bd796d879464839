"""The old name of `miniports.rtmidi.miniport` (and `.ports`): its imports keep working."""

from miniports.rtmidi.miniport import RtMidiCaptureStream, RtMidiMiniport, RtMidiRenderStream
from miniports.rtmidi.ports import (
    APIS,
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
