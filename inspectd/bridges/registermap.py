"""The Modbus register map: which holding register holds what, and how values are encoded.

A line integrator programs the PLC side against this table, so it is documented
(`inspectd bridge modbus --print-map`, README "Integrating with a PLC") and configurable (a YAML or JSON file
given with `--map`; every key is optional and defaults to the table below, so a file may
move just one field). Addresses are 0-based protocol addresses (what goes on the wire);
in Modicon numbering holding register N is 4xxxx = 40001 + N.

Default map (all holding registers):

    0  HEARTBEAT        bridge -> PLC  counter, +1 every heartbeat interval, wraps at 65535
    1  BRIDGE_STATUS    bridge -> PLC  bit 0 daemon alive, bit 1 replay failing, bit 2 queue full
    2  BACKLOG          bridge -> PLC  results waiting (incl. the one shown)
    3  NEW_RESULT       bridge -> PLC  1 = a result is shown and waits for its ack
    4  ACK              PLC -> bridge  the PLC copies SEQ_LO here once it took the result
    5  SEQ_LO, 6 SEQ_HI                the verdict's journal seq (low / high 16 bits)
    7  VERDICT_CODE                    0 none, 1 PASS, 2 FAIL, 3 ERROR, 4 NO_INSPECTION
    8  FAILED_RULE_COUNT
    10-25  PART_ID                     32 ASCII characters, 2 per register, first in the high byte
    30-35  porosity / unmelted / melted fraction (%) as float32 (high word first)
    36     pore_count (uint16)
    40-42  the same three fractions as int16 x 100 (5.25 % -> 525) for PLCs without floats
    100    TRIGGER_REQUEST  PLC -> bridge  1 = part in position (write the part id first)
    101    TRIGGER_STATUS   bridge -> PLC  1 accepted, 2 refused, 3 no answer, 4 bad request
    102-117 TRIGGER_PART_ID PLC -> bridge  32 ASCII characters

A value that is missing (an ERROR verdict has no porosity) is written as NaN (float32) or
as the type's sentinel: -32768 (int16), 65535 (uint16), -2^31 (int32), 2^32-1 (uint32).
Scaled values beyond the type's range are clamped (never wrapped) and logged.

Example:
    >>> register_map = RegisterMap()
    >>> register_map.seq_lo, register_map.address_of("ack")
    (5, 4)
    >>> encode_number(5.25, NumberType.INT16, scale=100)
    [525]
    >>> encode_string("P-17", 2)
    [20525, 12599]
    >>> decode_string([20525, 12599])
    'P-17'
"""

from __future__ import annotations

import enum
import logging
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from inspectd.bridges.handshake import AckMode, StatusBit, TriggerStatus, VerdictCode
from inspectd.config import StrictModel, compose_yaml, parse_yaml, read_text
from inspectd.errors import ConfigError
from inspectd.metric_values import finite_or_none

logger = logging.getLogger(__name__)

MAX_WRITE_REGISTERS = 123  # Modbus FC16 carries at most 123 registers per request
MAX_READ_REGISTERS = 125  # FC03 at most 125
TO_PLC, FROM_PLC, BOTH = "bridge->PLC", "PLC->bridge", "both"

Address = Annotated[int, Field(ge=0, le=65535, description="0-based holding register address")]


class NumberType(str, enum.Enum):
    """Register encodings of a number; 32-bit types take two registers (see `word_order`)."""

    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    FLOAT32 = "float32"

    @property
    def registers(self) -> int:
        return 1 if self in (NumberType.UINT16, NumberType.INT16) else 2


# (lowest allowed, highest allowed, "no value" sentinel) of the integer types.
_INT_RANGES = {
    NumberType.UINT16: (0, 2**16 - 2, 2**16 - 1),
    NumberType.INT16: (-(2**15) + 1, 2**15 - 1, -(2**15)),
    NumberType.UINT32: (0, 2**32 - 2, 2**32 - 1),
    NumberType.INT32: (-(2**31) + 1, 2**31 - 1, -(2**31)),
}
_STRUCT = {NumberType.UINT16: "H", NumberType.INT16: "h", NumberType.UINT32: "I",
           NumberType.INT32: "i", NumberType.FLOAT32: "f"}


class StringSlot(StrictModel):
    """A run of registers holding ASCII text, 2 characters per register."""

    address: Address
    registers: int = Field(ge=1, le=MAX_WRITE_REGISTERS, title="registers",
                           description="registers reserved (2 characters each); longer text is cut")


class ParameterSlot(StrictModel):
    """One measured parameter of the verdict (`parameters.<name>.value`) in registers."""

    name: str = Field(min_length=1, description="metric name, e.g. porosity_pct")
    address: Address
    type: NumberType = Field(NumberType.FLOAT32, description="register encoding")
    scale: float = Field(1.0, description="written value = measured value x scale (e.g. 100 for 2 decimals)")

    @model_validator(mode="after")
    def _verify_scale(self) -> ParameterSlot:
        if not math.isfinite(self.scale) or self.scale == 0:
            msg = f"scale must be a finite non-zero number, got {self.scale}"
            raise ValueError(msg)
        return self


class TriggerBlock(StrictModel):
    """Registers of a PLC trigger (part in position) for the daemon's triggered camera."""

    request: Address = Field(description="PLC writes 1 (after the part id); the bridge writes 0 when handled")
    status: Address = Field(description="bridge writes a TriggerStatus code before lowering `request`")
    part_id: StringSlot = Field(description="PLC writes the part id here (ASCII)")


def _default_parameters() -> list[ParameterSlot]:
    return [
        ParameterSlot(name="porosity_pct", address=30),
        ParameterSlot(name="unmelted_fraction_pct", address=32),
        ParameterSlot(name="melted_fraction_pct", address=34),
        ParameterSlot(name="pore_count", address=36, type=NumberType.UINT16),
        ParameterSlot(name="porosity_pct", address=40, type=NumberType.INT16, scale=100),
        ParameterSlot(name="unmelted_fraction_pct", address=41, type=NumberType.INT16, scale=100),
        ParameterSlot(name="melted_fraction_pct", address=42, type=NumberType.INT16, scale=100),
    ]


def _default_trigger() -> TriggerBlock:
    return TriggerBlock(request=100, status=101, part_id=StringSlot(address=102, registers=16))


class RegisterMap(StrictModel):
    """The whole map; `RegisterMap()` is the documented default. `None` switches a field off."""

    word_order: Literal["big", "little"] = Field(
        "big", description="32-bit values: big = high word in the lower register (most PLCs)")
    string_byte_order: Literal["big", "little"] = Field(
        "big", description="text: big = first character in the high byte of each register")
    ack_mode: AckMode = Field(AckMode.ECHO_SEQ, description="echo_seq: PLC copies SEQ_LO into ACK; "
                              "clear_flag: PLC writes 0 into NEW_RESULT")
    heartbeat: Address | None = 0
    bridge_status: Address | None = 1
    backlog: Address | None = 2
    new_result: Address = 3
    ack: Address | None = 4
    seq_lo: Address = 5
    seq_hi: Address | None = 6
    verdict_code: Address = 7
    failed_rule_count: Address | None = 8
    part_id: StringSlot | None = Field(default_factory=lambda: StringSlot(address=10, registers=16))
    parameters: list[ParameterSlot] = Field(default_factory=_default_parameters)
    trigger: TriggerBlock | None = Field(default_factory=_default_trigger)

    @model_validator(mode="after")
    def _verify(self) -> RegisterMap:
        verify_ack(self)
        verify_no_overlap(self)
        return self

    def address_of(self, name: str) -> int | None:
        """Address of a single-register field by name (`ack`, `trigger_request`, ...).

        Example:
            >>> RegisterMap().address_of("trigger_status")
            101
        """
        if name.startswith("trigger_"):
            if self.trigger is None:
                return None
            return getattr(self.trigger, name.removeprefix("trigger_"))
        return getattr(self, name)

    def entries(self) -> list[MapEntry]:
        """Every mapped register run, sorted by address (the `--print-map` rows)."""
        return sorted(_entries(self), key=lambda entry: entry.address)

    def encode_result(self, message: Mapping[str, Any]) -> dict[int, int]:
        """The result fields of a verdict message as {address: register value}.

        NEW_RESULT, ACK, the heartbeat and the trigger block are not part of it.

        Example:
            >>> regs = RegisterMap().encode_result({"seq": 70001, "verdict": "FAIL", "part_id": "A1",
            ...     "failed_rules": [{}], "parameters": {"porosity_pct": {"value": 5.25}}})
            >>> regs[5], regs[6], regs[7], regs[8], regs[40], regs[41]  # 32768: int16 -32768, no value
            (4465, 1, 2, 1, 525, 32768)
        """
        seq = int(message["seq"])
        values: dict[int, int] = {self.seq_lo: seq & 0xFFFF, self.verdict_code: int(VerdictCode.of(message.get("verdict")))}
        if self.seq_hi is not None:
            values[self.seq_hi] = (seq >> 16) & 0xFFFF
        if self.failed_rule_count is not None:
            values[self.failed_rule_count] = min(len(message.get("failed_rules") or ()), 0xFFFF)
        if self.part_id is not None:
            text = message.get("part_id") or ""
            _put(values, self.part_id.address,
                 encode_string(str(text), self.part_id.registers, byte_order=self.string_byte_order))
        parameters = message.get("parameters") or {}
        for slot in self.parameters:
            entry = parameters.get(slot.name)
            value = entry.get("value") if isinstance(entry, Mapping) else None
            _put(values, slot.address,
                 encode_number(value, slot.type, scale=slot.scale, word_order=self.word_order, name=slot.name))
        return values

    def table(self, *, markdown: bool = False) -> str:
        """The map as a table for people: plain text, or Markdown for the docs.

        Example:
            >>> print(RegisterMap().table().splitlines()[0])
            Modbus holding registers (0-based addresses; Modicon 4xxxx = 40001 + address)
        """
        rows = [(_span(e.address, e.registers), _span(40001 + e.address, e.registers), e.name, e.type,
                 e.direction, e.meaning)
                for e in self.entries()]
        header = ("Register", "4xxxx", "Name", "Type", "Direction", "Meaning")
        notes = [
            f"32-bit values: word order {self.word_order} ({'high word first' if self.word_order == 'big' else 'low word first'}); "
            f"text: ASCII, 2 characters per register, first character in the "
            f"{'high' if self.string_byte_order == 'big' else 'low'} byte, NUL padded.",
            f"Acknowledge mode: {self.ack_mode.value} ("
            + ("the PLC copies SEQ_LO into ACK" if self.ack_mode is AckMode.ECHO_SEQ
               else "the PLC writes 0 into NEW_RESULT") + ").",
            "Missing values: NaN (float32), -32768 (int16), 65535 (uint16), -2147483648 (int32), 4294967295 (uint32).",
        ]
        if markdown:
            lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
            return "\n".join(lines + [""] + notes)
        widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header[:-1])]
        lines = ["Modbus holding registers (0-based addresses; Modicon 4xxxx = 40001 + address)", *notes, ""]
        for row in (header, *rows):
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
        return "\n".join(lines)


@dataclass(frozen=True)
class MapEntry:
    """One row of the map table."""

    name: str
    address: int
    registers: int
    type: str
    direction: str
    meaning: str


def verify_ack(register_map: RegisterMap) -> None:
    """`echo_seq` needs an ACK register (the PLC copies SEQ_LO into it)."""
    if register_map.ack_mode is AckMode.ECHO_SEQ and register_map.ack is None:
        msg = "ack_mode echo_seq needs an 'ack' register (or set ack_mode: clear_flag)"
        raise ValueError(msg)


def verify_no_overlap(register_map: RegisterMap) -> None:
    """Two fields sharing a register would corrupt each other: refuse, naming both."""
    taken: dict[int, str] = {}
    for entry in _entries(register_map):
        if entry.address + entry.registers - 1 > 65535:
            msg = f"{entry.name} at {entry.address} ({entry.registers} registers) runs past register 65535"
            raise ValueError(msg)
        for address in range(entry.address, entry.address + entry.registers):
            if address in taken:
                msg = f"{entry.name} and {taken[address]} both use register {address}"
                raise ValueError(msg)
            taken[address] = entry.name


def encode_number(value: Any, number_type: NumberType, *, scale: float = 1.0,
                  word_order: str = "big", name: str = "value") -> list[int]:
    """`value x scale` as registers (missing -> NaN or the type's sentinel; clamped, never wrapped).

    Example:
        >>> encode_number(1.5, NumberType.FLOAT32), encode_number(1.5, NumberType.FLOAT32, word_order="little")
        ([16320, 0], [0, 16320])
        >>> encode_number(None, NumberType.INT16), encode_number(-3, NumberType.UINT16)
        ([32768], [0])
    """
    number = finite_or_none(value)
    if number_type is NumberType.FLOAT32:
        scaled = math.nan if number is None else number * scale
        try:
            raw = struct.pack(">f", scaled)
        except OverflowError:
            logger.warning("%s = %r does not fit a float32: written as infinity", name, value)
            raw = struct.pack(">f", math.copysign(math.inf, scaled))
    else:
        low, high, sentinel = _INT_RANGES[number_type]
        if number is None:
            integer = sentinel
        else:
            integer = round(number * scale)
            if not low <= integer <= high:
                logger.warning("%s = %r x %g does not fit %s: clamped", name, value, scale, number_type.value)
                integer = min(max(integer, low), high)
        raw = struct.pack(">" + _STRUCT[number_type], integer)
    words = list(struct.unpack(f">{len(raw) // 2}H", raw))
    return words[::-1] if word_order == "little" and len(words) == 2 else words


def decode_number(registers: Iterable[int], number_type: NumberType, *, scale: float = 1.0,
                  word_order: str = "big") -> float | int | None:
    """The inverse of `encode_number` (None for a sentinel; NaN stays NaN).

    Example:
        >>> decode_number([525], NumberType.INT16, scale=100), decode_number([32768], NumberType.INT16)
        (5.25, None)
    """
    words = [int(word) & 0xFFFF for word in registers][: number_type.registers]
    if word_order == "little" and len(words) == 2:
        words = words[::-1]
    (raw,) = struct.unpack(">" + _STRUCT[number_type], struct.pack(f">{len(words)}H", *words))
    if number_type is not NumberType.FLOAT32 and raw == _INT_RANGES[number_type][2]:
        return None
    return raw / scale if scale != 1 else raw


def encode_string(text: str, registers: int, *, byte_order: str = "big") -> list[int]:
    """ASCII text in `registers` registers, 2 characters each, NUL padded; cut if longer.

    Characters outside printable ASCII become '?'.

    Example:
        >>> encode_string("AB", 2), encode_string("AB", 1, byte_order="little")
        ([16706, 0], [16961])
    """
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    if len(clean) > 2 * registers:
        logger.warning("text %r is longer than %d characters: cut", text, 2 * registers)
    raw = clean.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\0")
    pairs = [raw[i: i + 2] for i in range(0, len(raw), 2)]
    if byte_order == "little":
        pairs = [pair[::-1] for pair in pairs]
    return [int.from_bytes(pair, "big") for pair in pairs]


def decode_string(registers: Iterable[int], *, byte_order: str = "big") -> str:
    """Text from registers (as `encode_string` writes it): up to the first NUL, spaces stripped.

    Example:
        >>> decode_string([0x5031, 0x3700, 0x4142])
        'P17'
    """
    raw = b"".join((int(word) & 0xFFFF).to_bytes(2, "big")[:: -1 if byte_order == "little" else 1]
                   for word in registers)
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace").strip()


def contiguous_runs(values: Mapping[int, int], *, max_length: int = MAX_WRITE_REGISTERS) -> list[tuple[int, list[int]]]:
    """Group {address: value} into (start, [values]) runs, one Modbus write each.

    Example:
        >>> contiguous_runs({5: 1, 6: 2, 8: 3})
        [(5, [1, 2]), (8, [3])]
    """
    runs: list[tuple[int, list[int]]] = []
    for address in sorted(values):
        if runs and runs[-1][0] + len(runs[-1][1]) == address and len(runs[-1][1]) < max_length:
            runs[-1][1].append(values[address] & 0xFFFF)
        else:
            runs.append((address, [values[address] & 0xFFFF]))
    return runs


def load_register_map(path: str | Path | None) -> RegisterMap:
    """Read a map file (YAML or JSON); None gives the default map.

    Raises `ConfigError` naming the file, line, key path and value.

    Example:
        >>> load_register_map(None).seq_lo
        5
    """
    if path is None:
        return RegisterMap()
    return parse_register_map(read_text(path, "register map"), origin=str(path))


def parse_register_map(text: str, *, origin: str = "<register map>") -> RegisterMap:
    """Validate map text (YAML, of which JSON is a subset); keys left out keep their defaults.

    Example:
        >>> parse_register_map("seq_lo: 50\\nseq_hi: 51").seq_lo
        50
        >>> parse_register_map("seq_lo: 3")
        Traceback (most recent call last):
        ...
        inspectd.errors.ConfigError: <register map>: seq_lo and new_result both use register 3
    """
    raw = parse_yaml(text, origin=origin, kind="YAML/JSON")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        msg = f"{origin}: a register map is a mapping of keys, got {type(raw).__name__}"
        raise ConfigError(msg)
    try:
        return RegisterMap.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, text, origin)) from exc


def _describe(exc: ValidationError, text: str, origin: str) -> str:
    root = compose_yaml(text)
    lines = []
    for err in exc.errors():
        loc = err["loc"]
        key_path = ".".join(str(part) for part in loc)
        line = _yaml_line(root, loc)
        at = f" (line {line})" if line else ""
        shown = "" if err["type"] == "missing" or not key_path else f" = {err.get('input')!r}"
        reason = str(err["msg"]).removeprefix("Value error, ")
        lines.append(f"{origin}{at}: {key_path + shown + ': ' if key_path else ''}{reason}")
    return "\n".join(lines)


def _yaml_line(node: Any, loc: tuple) -> int | None:
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            entry = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if entry is None:
                break
            line, node = entry[0].start_mark.line + 1, entry[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _entries(register_map: RegisterMap) -> list[MapEntry]:
    m = register_map
    ack_word = "ACK" if m.ack_mode is AckMode.ECHO_SEQ else "NEW_RESULT = 0"
    bits = ", ".join(f"bit {bit.value.bit_length() - 1} {bit.name.lower().replace('_', ' ')}" for bit in StatusBit)
    codes = ", ".join(f"{code.value} {code.name}" for code in VerdictCode)
    trigger_codes = ", ".join(f"{code.value} {code.name.lower().replace('_', ' ')}" for code in TriggerStatus)
    single = [
        ("heartbeat", m.heartbeat, "uint16", TO_PLC, "counter, +1 every heartbeat interval (wraps 65535 -> 0)"),
        ("bridge_status", m.bridge_status, "uint16 bits", TO_PLC, bits),
        ("backlog", m.backlog, "uint16", TO_PLC, "results waiting, including the one shown (max 65535)"),
        ("new_result", m.new_result, "uint16", TO_PLC if m.ack_mode is AckMode.ECHO_SEQ else BOTH,
         f"1 = a result is shown; the PLC takes it, then acknowledges with {ack_word}"),
        ("ack", m.ack, "uint16", FROM_PLC, "the PLC copies SEQ_LO here once it took the result"
         if m.ack_mode is AckMode.ECHO_SEQ else "unused in clear_flag mode"),
        ("seq_lo", m.seq_lo, "uint16", TO_PLC, "the verdict's seq, low 16 bits (seq & 0xFFFF)"),
        ("seq_hi", m.seq_hi, "uint16", TO_PLC, "the verdict's seq, high 16 bits (seq >> 16)"),
        ("verdict_code", m.verdict_code, "uint16", TO_PLC, codes),
        ("failed_rule_count", m.failed_rule_count, "uint16", TO_PLC, "number of rules the part failed"),
    ]
    entries = [MapEntry(name, address, 1, kind, direction, meaning)
               for name, address, kind, direction, meaning in single if address is not None]
    if m.part_id is not None:
        entries.append(MapEntry("part_id", m.part_id.address, m.part_id.registers,
                                f"string[{2 * m.part_id.registers}]", TO_PLC, "part / sample id (ASCII)"))
    for slot in m.parameters:
        kind = slot.type.value if slot.scale == 1 else f"{slot.type.value} x{slot.scale:g}"
        entries.append(MapEntry(slot.name, slot.address, slot.type.registers, kind, TO_PLC,
                                f"parameters.{slot.name}" + ("" if slot.scale == 1 else f" x {slot.scale:g}")))
    if m.trigger is not None:
        t = m.trigger
        entries += [
            MapEntry("trigger_request", t.request, 1, "uint16", BOTH,
                     "PLC writes 1 = part in position (after TRIGGER_PART_ID); the bridge writes 0 when done"),
            MapEntry("trigger_status", t.status, 1, "uint16", TO_PLC, trigger_codes),
            MapEntry("trigger_part_id", t.part_id.address, t.part_id.registers,
                     f"string[{2 * t.part_id.registers}]", FROM_PLC, "part id of the part in position (ASCII)"),
        ]
    return entries


def _put(values: dict[int, int], address: int, words: list[int]) -> None:
    for offset, word in enumerate(words):
        values[address + offset] = word


def _span(address: int, registers: int) -> str:
    return str(address) if registers == 1 else f"{address}-{address + registers - 1}"
