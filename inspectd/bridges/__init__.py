"""PLC bridges: the daemon's verdicts to a line controller, and its triggers back.

`inspectd bridge modbus` and `inspectd bridge opcua` subscribe to the verdict stream (gap
detection and replay, like `inspectd subscribe`), show one result at a time on the PLC with
a new-result / acknowledge handshake (`handshake`), persist what the PLC acknowledged
(`cursor`), and forward the PLC's part-in-position triggers to the daemon's triggered
camera. `registermap` is the documented Modbus register layout; `opcua` serves or writes
the same values as OPC UA variables. The fieldbus libraries (pymodbus, asyncua) are
optional: they are imported only when a bridge connects.
"""

from inspectd.bridges.cursor import Cursor, CursorError
from inspectd.bridges.handshake import (
    AckMode,
    Bridge,
    Delivery,
    FieldbusError,
    HandshakeView,
    StatusBit,
    TriggerStatus,
    VerdictCode,
    classify,
    forward_trigger,
)

__all__ = [
    "AckMode",
    "Bridge",
    "Cursor",
    "CursorError",
    "Delivery",
    "FieldbusError",
    "HandshakeView",
    "StatusBit",
    "TriggerStatus",
    "VerdictCode",
    "classify",
    "forward_trigger",
]
