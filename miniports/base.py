"""The old name of `miniports.contract`: `from miniports.base import ...` keeps working."""

from miniports.contract import (
    DataFormat,
    DataRange,
    FifoCaptureStream,
    FilterDescriptor,
    InterruptSync,
    InterruptSyncMode,
    KsState,
    MiniportMidi,
    MiniportMidiStream,
    Port,
    PortServiceGroup,
    RegistryKey,
    ResourceList,
    ServiceSink,
    Status,
    StatusError,
)

__all__ = [
    "DataFormat",
    "DataRange",
    "FifoCaptureStream",
    "FilterDescriptor",
    "InterruptSync",
    "InterruptSyncMode",
    "KsState",
    "MiniportMidi",
    "MiniportMidiStream",
    "Port",
    "PortServiceGroup",
    "RegistryKey",
    "ResourceList",
    "ServiceSink",
    "Status",
    "StatusError",
]
