"""The README's "Integrating with a PLC" stays true: its register table and examples load."""

from __future__ import annotations

import re
from pathlib import Path

from inspectd.bridges.opcua import load_node_map
from inspectd.bridges.registermap import RegisterMap, parse_register_map

README = Path(__file__).resolve().parents[2] / "README.md"


def plc_section() -> str:
    text = README.read_text()
    start = text.index("## Integrating with a PLC")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", plc_section(), flags=re.S)


def test_documented_register_table_is_the_default_map():
    table = RegisterMap().table(markdown=True).split("\n\n")[0]
    assert table in plc_section()


def test_documented_map_and_node_map_examples_are_valid(tmp_path):
    register_example, node_example = yaml_blocks()
    register_map = parse_register_map(register_example, origin="README.md")
    assert register_map.seq_lo == 1005 and register_map.trigger is None
    path = tmp_path / "nodes.yaml"
    path.write_text(node_example)
    node_map = load_node_map(path)
    assert node_map.nodes["seq"] == "s=DB10.Seq" and node_map.has_trigger
    assert "epoch" not in node_map.nodes  # listing nodes replaces the defaults
