"""Modbus TCP: the PLC's holding registers as the handshake's fieldbus (pymodbus client).

The PLC (or a gateway) is the Modbus *server*; the bridge is a client that writes the
result block and polls NEW_RESULT / ACK and the trigger block every poll interval. Where
each value lives is the `RegisterMap` (`inspectd bridge modbus --print-map`).

Writes go out as few FC16 requests as the map allows (one per contiguous run of
registers), the result fields strictly before NEW_RESULT, so a PLC that sees the flag
also sees the whole result. pymodbus is an optional dependency (`pip install
'inspectd[plc]'`), imported when the first connection is made.

Example:
    >>> from inspectd.bridges.registermap import RegisterMap
    >>> bus = ModbusBus("127.0.0.1", 9, unit=1, register_map=RegisterMap(), timeout_s=0.1)
    >>> bus.description
    'modbus://127.0.0.1:9 unit 1'
    >>> try:
    ...     bus.connect()
    ... except FieldbusError as error:
    ...     print(str(error).split(":")[0])
    cannot connect to the PLC at 127.0.0.1
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from inspectd.bridges.handshake import (
    AckMode,
    FieldbusError,
    HandshakeView,
    StatusBit,
    TriggerStatus,
)
from inspectd.bridges.registermap import (
    MAX_READ_REGISTERS,
    RegisterMap,
    contiguous_runs,
    decode_string,
)
from inspectd.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_MODBUS_PORT = 502


def parse_host_port(text: str, default_port: int = DEFAULT_MODBUS_PORT) -> tuple[str, int]:
    """`HOST:PORT` (or `HOST`, or `[v6addr]:PORT`) as (host, port); ConfigError when malformed.

    Example:
        >>> parse_host_port("10.0.0.5:1502"), parse_host_port("plc1"), parse_host_port("[::1]:502")
        (('10.0.0.5', 1502), ('plc1', 502), ('::1', 502))
    """
    host, port_text = text, ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = -1
    if not host or not 0 < port < 65536:
        msg = f"--plc must be HOST:PORT (e.g. 192.168.0.10:502), got {text!r}"
        raise ConfigError(msg)
    return host, port


class ModbusBus:
    """The handshake's `Fieldbus` on a Modbus TCP device's holding registers.

    `unit` is the Modbus unit / device id (1 for most PLCs; gateways route by it).
    `timeout_s` bounds each request, so a PLC that vanished is noticed within it.
    """

    heartbeat_modulus = 1 << 16

    def __init__(self, host: str, port: int = DEFAULT_MODBUS_PORT, *, unit: int = 1,
                 register_map: RegisterMap | None = None, timeout_s: float = 1.0) -> None:
        if not 0 <= unit <= 255:
            msg = f"--unit must be 0..255, got {unit}"
            raise ConfigError(msg)
        self.host = host
        self.port = int(port)
        self.unit = int(unit)
        self.register_map = register_map or RegisterMap()
        self.timeout_s = float(timeout_s)
        self.description = f"modbus://{host}:{port} unit {unit}"
        self.ack_mode: AckMode = self.register_map.ack_mode
        self.has_trigger = self.register_map.trigger is not None
        self._client: Any = None

    # -- Fieldbus ------------------------------------------------------------------------------

    def connect(self) -> None:
        client_class = _client_class()
        client = client_class(self.host, port=self.port, timeout=self.timeout_s, retries=0)
        try:
            connected = client.connect()
        except OSError as exc:  # name resolution and the like
            connected, reason = False, str(exc)
        else:
            reason = "connection refused or timed out"
        if not connected:
            client.close()
            msg = f"cannot connect to the PLC at {self.host}:{self.port}: {reason}"
            raise FieldbusError(msg)
        self._client = client
        self.read_handshake()  # a map that does not fit the device fails here, by name

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken socket must not hide why it broke
                logger.debug("closing the Modbus client failed", exc_info=True)

    def read_handshake(self) -> HandshakeView:
        m = self.register_map
        wanted = [a for a in (m.new_result, m.ack, m.seq_lo, m.seq_hi) if a is not None]
        regs = self._read(wanted)
        seq = regs[m.seq_lo] | (regs[m.seq_hi] << 16 if m.seq_hi is not None else 0)
        return HandshakeView(
            new_result=regs[m.new_result] != 0,
            seq=seq,
            ack=None if m.ack is None else regs[m.ack],
            seq_modulus=1 << (32 if m.seq_hi is not None else 16),
            ack_modulus=1 << 16,
        )

    def present(self, message: Mapping[str, Any]) -> None:
        self._write(self.register_map.encode_result(message))
        self._write({self.register_map.new_result: 1})  # last: the result is complete now

    def withdraw(self) -> None:
        self._write({self.register_map.new_result: 0})

    def read_heartbeat(self) -> int:
        address = self.register_map.heartbeat
        return 0 if address is None else self._read([address])[address]

    def write_heartbeat(self, count: int, status: StatusBit, backlog: int) -> None:
        m = self.register_map
        values = {}
        if m.heartbeat is not None:
            values[m.heartbeat] = count % self.heartbeat_modulus
        if m.bridge_status is not None:
            values[m.bridge_status] = int(status)
        if m.backlog is not None:
            values[m.backlog] = min(int(backlog), 0xFFFF)
        if values:
            self._write(values)

    def read_trigger(self) -> str | None:
        trigger = self.register_map.trigger
        if trigger is None:
            return None
        slot = trigger.part_id
        regs = self._read([trigger.request, *range(slot.address, slot.address + slot.registers)])
        if regs[trigger.request] == 0:
            return None
        words = [regs[a] for a in range(slot.address, slot.address + slot.registers)]
        return decode_string(words, byte_order=self.register_map.string_byte_order)

    def answer_trigger(self, status: TriggerStatus) -> None:
        trigger = self.register_map.trigger
        if trigger is None:
            return
        self._write({trigger.status: int(status)})
        self._write({trigger.request: 0})  # last: the PLC reads the status once the flag drops

    # -- register I/O --------------------------------------------------------------------------

    def _read(self, addresses: Iterable[int]) -> dict[int, int]:
        """Read the given registers, in one request when they lie within 125 registers."""
        wanted = sorted(set(addresses))
        groups: list[list[int]] = []
        for address in wanted:
            if groups and address - groups[-1][0] < MAX_READ_REGISTERS:
                groups[-1].append(address)
            else:
                groups.append([address])
        regs: dict[int, int] = {}
        for group in groups:
            start, count = group[0], group[-1] - group[0] + 1
            response = self._call("read", start, count,
                                  lambda c, s=start, n=count: c.read_holding_registers(s, count=n, device_id=self.unit))
            values = list(response.registers)
            if len(values) < count:
                msg = f"PLC answered {len(values)} of {count} registers at {start}"
                raise FieldbusError(msg)
            regs.update((start + offset, values[offset]) for offset in range(count))
        return {address: regs[address] for address in wanted}

    def _write(self, values: Mapping[int, int]) -> None:
        for start, words in contiguous_runs(values):
            self._call("write", start, len(words),
                       lambda c, s=start, w=words: c.write_registers(s, w, device_id=self.unit))

    def _call(self, verb: str, start: int, count: int, operation: Any) -> Any:
        client = self._client
        if client is None:
            msg = f"not connected to {self.host}:{self.port}"
            raise FieldbusError(msg)
        from pymodbus.exceptions import ModbusException

        try:
            response = operation(client)
        except (ModbusException, OSError) as exc:
            msg = f"{verb} of {count} registers at {start} failed: {exc}"
            raise FieldbusError(msg) from exc
        if response.isError():
            code = getattr(response, "exception_code", "?")
            msg = (f"PLC refused the {verb} of {count} registers at {start} (unit {self.unit}, "
                   f"Modbus exception {code}): check the register map and --unit")
            raise FieldbusError(msg)
        return response


def _client_class() -> Any:
    try:
        from pymodbus.client import ModbusTcpClient
    except ImportError as exc:
        msg = "the Modbus bridge needs pymodbus: pip install 'inspectd[plc]' (or pymodbus)"
        raise ConfigError(msg) from exc
    return ModbusTcpClient
