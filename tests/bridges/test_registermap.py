"""The Modbus register map: defaults, encodings (checked with struct, not our decoder), map files."""

from __future__ import annotations

import math
import struct

import pytest

from inspectd.bridges.registermap import (
    NumberType,
    RegisterMap,
    contiguous_runs,
    decode_number,
    decode_string,
    encode_number,
    encode_string,
    load_register_map,
    parse_register_map,
)
from inspectd.errors import ConfigError
from tests.bridges.conftest import decode_result
from tests.daemon.conftest import make_draft


def test_default_map_has_seq_low_bits_in_a_register_below_200_and_no_overlaps():
    register_map = RegisterMap()
    assert 0 <= register_map.seq_lo <= 199
    entries = register_map.entries()
    used = [a for e in entries for a in range(e.address, e.address + e.registers)]
    assert len(used) == len(set(used))
    assert {"heartbeat", "new_result", "ack", "seq_lo", "verdict_code", "part_id", "trigger_request"} <= {
        e.name for e in entries}


def test_encoded_result_reads_back_as_a_plc_programmer_decodes_it():
    message = {**make_draft(7), "seq": 70_001, "epoch": 3}
    registers = [0] * 50
    for address, value in RegisterMap().encode_result(message).items():
        registers[address] = value
    shown = decode_result(registers)
    assert shown["seq"] == 70_001
    assert shown["part_id"] == "P00007"
    assert shown["verdict_code"] == 2  # FAIL
    assert shown["failed_rule_count"] == 1
    assert shown["porosity_pct"] == pytest.approx(message["parameters"]["porosity_pct"]["value"], abs=1e-5)
    assert shown["porosity_x100"] == round(message["parameters"]["porosity_pct"]["value"] * 100)
    assert shown["pore_count"] == 17


def test_error_verdict_without_parameters_writes_nan_and_sentinels():
    message = {"seq": 1, "verdict": "ERROR", "part_id": None, "parameters": {}, "failed_rules": []}
    values = RegisterMap().encode_result(message)
    assert values[7] == 3
    assert math.isnan(struct.unpack(">f", struct.pack(">2H", values[30], values[31]))[0])
    assert struct.unpack(">h", struct.pack(">H", values[40]))[0] == -32768
    assert values[36] == 65535
    assert all(values[a] == 0 for a in range(10, 26))  # empty part id


@pytest.mark.parametrize(("number_type", "value", "scale", "fmt"), [
    (NumberType.UINT16, 17, 1, ">H"), (NumberType.INT16, -12.34, 100, ">h"),
    (NumberType.UINT32, 123_456, 1, ">I"), (NumberType.INT32, -98_765.4, 10, ">i"),
    (NumberType.FLOAT32, 3.14159, 1, ">f"),
])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_numbers_encode_like_struct_and_round_trip(number_type, value, scale, fmt, word_order):
    words = encode_number(value, number_type, scale=scale, word_order=word_order)
    wire = words if word_order == "big" else words[::-1]
    (raw,) = struct.unpack(fmt, struct.pack(f">{len(wire)}H", *wire))
    expected = value * scale if number_type is NumberType.FLOAT32 else round(value * scale)
    assert raw == pytest.approx(expected, rel=1e-6)
    assert decode_number(words, number_type, scale=scale, word_order=word_order) == pytest.approx(value, rel=1e-5)


def test_out_of_range_values_are_clamped_not_wrapped():
    assert encode_number(400.0, NumberType.INT16, scale=100) == [32767]
    assert encode_number(-5, NumberType.UINT16) == [0]
    assert encode_number(1e40, NumberType.FLOAT32) == [0x7F80, 0]  # +inf
    assert decode_number(encode_number(None, NumberType.UINT32), NumberType.UINT32) is None


def test_strings_are_ascii_two_per_register_cut_and_cleaned():
    assert encode_string("AB", 2) == [0x4142, 0]
    assert encode_string("AB", 1, byte_order="little") == [0x4241]
    assert decode_string(encode_string("LOT-2024/Ä1", 8)) == "LOT-2024/?1"
    assert decode_string(encode_string("X" * 40, 4)) == "X" * 8
    assert decode_string(encode_string("P7", 3, byte_order="little"), byte_order="little") == "P7"


def test_contiguous_runs_respect_the_fc16_limit():
    runs = contiguous_runs({address: address for address in range(300)})
    assert [(start, len(words)) for start, words in runs] == [(0, 123), (123, 123), (246, 54)]


def test_map_file_moves_fields_and_keeps_the_rest(tmp_path):
    path = tmp_path / "map.yaml"
    path.write_text("word_order: little\nseq_lo: 150\nseq_hi: 151\n"
                    "parameters:\n  - {name: porosity_pct, address: 60, type: int32, scale: 1000}\n")
    register_map = load_register_map(path)
    assert (register_map.seq_lo, register_map.seq_hi, register_map.new_result) == (150, 151, 3)
    values = register_map.encode_result({"seq": 5, "verdict": "PASS", "parameters": {"porosity_pct": {"value": 1.5}}})
    assert values[150] == 5 and (values[60], values[61]) == (1500, 0)  # low word first
    (tmp_path / "map.json").write_text('{"ack_mode": "clear_flag", "ack": null, "trigger": null}')
    json_map = load_register_map(tmp_path / "map.json")
    assert json_map.ack is None and json_map.trigger is None
    assert "trigger_request" not in {e.name for e in json_map.entries()}


@pytest.mark.parametrize(("text", "expected"), [
    ("seq_lo: 3\n", "seq_lo and new_result both use register 3"),
    ("ack: null\n", "ack_mode echo_seq needs an 'ack' register"),
    ("sequence: 9\n", "(line 1): sequence = 9: Extra inputs are not permitted"),
    ("verdict_code: 8\nparameters:\n  - {name: x, address: 9, type: double}\n", "(line 3): parameters.0.type = 'double'"),
    ("part_id: {address: 65530, registers: 16}\n", "runs past register 65535"),
    ("- 1\n", "a register map is a mapping"),
])
def test_bad_map_files_are_refused_with_the_key_path(text, expected):
    with pytest.raises(ConfigError) as error:
        parse_register_map(text, origin="map.yaml")
    assert expected in str(error.value)
    assert str(error.value).startswith("map.yaml")


def test_table_lists_every_field_with_its_modicon_address():
    table = RegisterMap().table()
    row = next(line for line in table.splitlines() if " seq_lo " in line)
    assert row.split()[:2] == ["5", "40006"]
    markdown = RegisterMap().table(markdown=True)
    assert "| 10-25 | 40011-40026 | part_id | string[32] |" in markdown
