"""The MPU-401: the emulated card (`card`), the cables plugged into it (`cables`) and the
built-in UART miniport that drives it (`miniport`, registered as "mpu401").

Importing the package gives the card's and the cables' names, as the module
`miniports.mpu401` did before it became a package; the miniport is
`miniports.mpu401.miniport`.
"""

from miniports.mpu401.cables import (
    CABLES,
    Cable,
    CableError,
    LoopbackCable,
    MidiFramer,
    NullCable,
    RtMidiCable,
    open_cable,
)
from miniports.mpu401.card import (
    ACK,
    BITS_PER_BYTE,
    CMD_RESET,
    CMD_UART_MODE,
    COMMAND_PORT,
    DATA_PORT,
    FLOATING_BUS,
    STATUS_INPUT_EMPTY,
    STATUS_OUTPUT_NOT_READY,
    STATUS_PORT,
    WIRE_BAUD,
    IoDevice,
    IoSpace,
    Mpu401,
    byte_time,
)

__all__ = [
    "ACK",
    "BITS_PER_BYTE",
    "CABLES",
    "CMD_RESET",
    "CMD_UART_MODE",
    "COMMAND_PORT",
    "DATA_PORT",
    "FLOATING_BUS",
    "STATUS_INPUT_EMPTY",
    "STATUS_OUTPUT_NOT_READY",
    "STATUS_PORT",
    "WIRE_BAUD",
    "Cable",
    "CableError",
    "IoDevice",
    "IoSpace",
    "LoopbackCable",
    "MidiFramer",
    "Mpu401",
    "NullCable",
    "RtMidiCable",
    "byte_time",
    "open_cable",
]
