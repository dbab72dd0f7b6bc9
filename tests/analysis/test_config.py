"""The config model: defaults documented in config.yaml, strict validation with key paths."""

from __future__ import annotations

import re

import pytest

from inspectd import config
from inspectd.errors import ConfigError
from tests.conftest import REPO_ROOT


def _leaf_paths(obj: object, prefix: str = "") -> set[str]:
    if isinstance(obj, dict):
        paths: set[str] = set()
        for key, value in obj.items():
            paths |= _leaf_paths(value, f"{prefix}.{key}" if prefix else key)
        return paths
    return {prefix}


def test_shipped_config_yaml_equals_the_defaults() -> None:
    assert config.load(REPO_ROOT / "config.yaml") == config.Config()


def test_shipped_config_yaml_documents_every_key() -> None:
    import yaml

    shipped = yaml.safe_load((REPO_ROOT / "config.yaml").read_text())
    defaults = config.Config().model_dump(mode="json")
    assert _leaf_paths(shipped) == _leaf_paths(defaults)


def test_none_gives_defaults() -> None:
    cfg = config.load(None)
    assert cfg.preprocess.clahe.tile_grid == (8, 8)
    assert cfg.segment.engine == "classical"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("bogus_key: 1\n", "bogus_key"),
        ("preprocess:\n  clahe:\n    clip_limit: -1\n", "preprocess.clahe.clip_limit"),
        ("preprocess:\n  clahe:\n    tile_grid: [0, 8]\n", "preprocess.clahe"),
        ("preprocess:\n  denoise_ksize: 4\n", "denoise_ksize"),
        ("um_per_px: fast\n", "um_per_px"),
        ("rules:\n  - metric: porosity_pct\n    op: '=='\n    limit: 1\n", "rules.0.op"),
        ("rules:\n  - metric: nope\n    op: '<'\n    limit: 1\n", "rules.0.metric"),
        ("segment:\n  classical:\n    threshold: magic\n", "segment.classical.threshold"),
    ],
)
def test_invalid_values_name_the_key_path(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, origin="cfg.yaml")
    assert expected in str(info.value)
    assert "cfg.yaml" in str(info.value)


def test_error_points_at_the_yaml_line() -> None:
    text = "station: s1\npreprocess:\n  clahe:\n    clip_limit: -3\n"
    with pytest.raises(ConfigError, match=r"line 4"):
        config.parse(text)


def test_not_a_mapping_and_bad_yaml_are_config_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        config.parse("- a\n- b\n")
    with pytest.raises(ConfigError, match="YAML"):
        config.parse("a: [1, 2\n")
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.yaml")


# ---- reading a config safely: size, nesting, aliases, text -----------------------------


def _alias_bomb_in_sequences(levels: int = 9) -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _alias_bomb_in_mappings(levels: int = 9) -> str:
    lines = ["l0: &l0 {" + ", ".join(f"k{j}: lol" for j in range(9)) + "}"]
    lines += [f"l{i}: &l{i} {{" + ", ".join(f"k{j}: *l{i - 1}" for j in range(9)) + "}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _alias_bomb_in_merge_keys(levels: int = 12) -> str:
    """Each level merges the previous mapping twice under new keys: the merged mapping doubles per level."""
    lines = ["m0: &m0 {a: lol, b: lol}"]
    lines += [f"m{i}: &m{i} {{x: *m{i - 1}, y: *m{i - 1}, <<: *m{i - 1}}}" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("text", [
    pytest.param(_alias_bomb_in_sequences(), id="sequences"),
    pytest.param(_alias_bomb_in_mappings(), id="mappings"),
    pytest.param(_alias_bomb_in_merge_keys(levels=24), id="merge-keys"),
    pytest.param("s: &s " + "x" * 4000 + "\nmany: [" + ", ".join(["*s"] * 600) + "]\n", id="long-string-repeated"),
    pytest.param("bogus:\n" + "".join(f"  {line}\n" for line in _alias_bomb_in_sequences().splitlines()),
                 id="under-an-unknown-key"),
])
def test_alias_expansion_beyond_the_size_limit_is_refused_while_reading(text: str) -> None:
    """A few hundred bytes that expand into gigabytes ("billion laughs") are refused before anything is built."""
    assert len(text.encode()) < 50_000
    with pytest.raises(ConfigError, match=r"cfg\.yaml \(line \d+, column \d+\): not valid YAML: its aliases expand it"):
        config.parse(text, origin="cfg.yaml")


def test_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(ConfigError, match="inside its own anchor"):
        config.parse("a: &a [1, *a]\n")


def test_ordinary_anchors_and_merge_keys_still_work() -> None:
    text = (
        "defaults: &folder {kind: folder, stable_s: 0.3}\n"
        "sources:\n"
        "  - {<<: *folder, id: left, path: /srv/left}\n"
        "  - {<<: *folder, id: right, path: /srv/right, stable_s: 0.6}\n"
    )
    raw = config.parse_yaml(text, origin="cfg.yaml")
    raw.pop("defaults")
    cfg = config.parse_object(raw)
    assert [(s.id, s.stable_s) for s in cfg.sources] == [("left", 0.3), ("right", 0.6)]


@pytest.mark.parametrize("text", [
    pytest.param("a: " + "[" * 10_000 + "]" * 10_000 + "\n", id="flow-sequences-10000"),
    pytest.param("a: " + "{b: " * 5_000 + "1" + "}" * 5_000 + "\n", id="flow-mappings-5000"),
    pytest.param("".join(f"{'  ' * depth}k{depth}:\n" for depth in range(40)) + "  " * 40 + "v\n", id="block-40"),
])
def test_nesting_deeper_than_the_limit_is_one_line_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, origin="deep.yaml")
    message = str(info.value)
    # libyaml (where PyYAML has it) refuses flow nesting beyond 1000 itself, in its own words
    assert message.startswith("deep.yaml (line ") and re.search(r"nested more than 32 levels deep|nesting depth",
                                                                  message)
    assert "\n" not in message


@pytest.mark.parametrize(("content", "expected"), [
    pytest.param(bytes(range(256)) * 4, "is not UTF-8 text", id="binary"),
    pytest.param(b"station: s1\nsegment:\n  engine: class\x00ical\n", "(line 3): not YAML text: it holds the control "
                 "character U+0000", id="nul-byte"),
    pytest.param(b"station: s1\x1b[2J\n", "control character U+001B", id="escape-sequence"),
    pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "is not UTF-8 text", id="png-header"),
    pytest.param(b"station: s1\n" + b"# padding\n" * 1_000_000, "larger than 256 KiB", id="10-MB"),
])
def test_a_file_that_is_not_a_yaml_text_is_refused_in_one_line(tmp_path, content: bytes, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(path))


def test_reading_a_device_stops_at_the_size_limit() -> None:
    """/dev/zero never ends: only the first 256 KiB and one byte are read."""
    with pytest.raises(ConfigError, match="larger than 256 KiB"):
        config.load("/dev/zero")


@pytest.mark.parametrize(("text", "expected"), [
    ("station: " + "9" * 5000 + "\n", "cannot read '9999"),
    ("station: 2026-13-45\n", "cannot read '2026-13-45': month must be in 1..12"),
    ("a: !!python/object:os.system {}\n", "could not determine a constructor"),
    ("a: [1, 2\n", "expected ',' or ']'"),
])
def test_values_yaml_cannot_build_are_one_line_errors_with_the_line(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, origin="cfg.yaml")
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("cfg.yaml (line ")


@pytest.mark.parametrize(("text", "line", "key", "first"), [
    ("station: a\num_per_px: 1\nstation: b\n", 3, "station", 1),
    ("segment:\n  classical:\n    slic:\n      enabled: true\n      n_segments: 9\n      enabled: false\n", 6,
     "enabled", 4),
    ("sources:\n  - kind: folder\n    path: /a\n    include: ['*.png']\n    path: /b\n", 5, "path", 3),
    ("rules: [{metric: porosity_pct, op: '<=', limit: 5, limit: 50}]\n", 1, "limit", 1),
    ("station: a\n'station': b\n", 2, "station", 1),
])
def test_duplicate_keys_are_refused_with_both_lines(text: str, line: int, key: str, first: int) -> None:
    """PyYAML would keep the last one silently, so a second entry lower down would win unseen."""
    with pytest.raises(ConfigError) as info:
        config.parse(text, origin="cfg.yaml")
    assert f"cfg.yaml (line {line}, column" in str(info.value)
    assert f"duplicate key '{key}' (first at line {first})" in str(info.value)


# ---- every value in range ------------------------------------------------------------

FOLDER = "sources:\n  - kind: folder\n    path: /srv/inbox\n"
CAMERA = "sources:\n  - kind: opencv\n    mode: triggered\n"


@pytest.mark.parametrize(("text", "key"), [
    ("publish:\n  heartbeat_interval_s: 0.000001\n", "publish.heartbeat_interval_s"),
    ("publish:\n  heartbeat_interval_s: 1e-6\n", "publish.heartbeat_interval_s"),
    ("pipeline:\n  shutdown_grace_s: .inf\n", "pipeline.shutdown_grace_s"),
    ("pipeline:\n  shutdown_grace_s: 1.0e+9\n", "pipeline.shutdown_grace_s"),
    ("pipeline:\n  stall_after_s: .inf\n", "pipeline.stall_after_s"),
    ("pipeline:\n  stall_after_s: 0.001\n", "pipeline.stall_after_s"),
    ("journal:\n  lock_timeout_s: .inf\n", "journal.lock_timeout_s"),
    ("journal:\n  retention_days: .nan\n", "journal.retention_days"),
    (FOLDER + "    rescan_interval_s: .inf\n", "sources.0.rescan_interval_s"),
    (FOLDER + "    poll_interval_s: 0.0000001\n", "sources.0.poll_interval_s"),
    (FOLDER + "    stable_s: -.inf\n", "sources.0.stable_s"),
    (CAMERA + "    frame_timeout_s: .inf\n", "sources.0.frame_timeout_s"),
    (CAMERA + "    reconnect_max_s: .nan\n", "sources.0.reconnect_max_s"),
    (CAMERA + "    fps_cap: .inf\n", "sources.0.fps_cap"),
    ("rules:\n  - metric: porosity_pct\n    op: '<='\n    limit: .nan\n", "rules.0.limit"),
    ("rules:\n  - metric: porosity_pct\n    op: '<='\n    limit: .inf\n", "rules.0.limit"),
    ("segment:\n  classical:\n    pore_level: .nan\n", "segment.classical.pore_level"),
    ("segment:\n  classical:\n    adaptive_offset: .nan\n", "segment.classical.adaptive_offset"),
    ("segment:\n  classical:\n    slic:\n      compactness: .inf\n", "segment.classical.slic.compactness"),
    ("um_per_px: .nan\n", "um_per_px"),
    ("publish:\n  sndhwm: 100000000000000000000\n", "publish.sndhwm"),
    ("input:\n  max_file_bytes: 100000000000000000000\n", "input.max_file_bytes"),
])
def test_numbers_must_be_finite_and_in_range(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, origin="cfg.yaml")
    assert key in str(info.value) and "\n" not in str(info.value)


def test_camera_backoff_must_grow() -> None:
    with pytest.raises(ConfigError, match="reconnect_initial_s"):
        config.parse(CAMERA + "    reconnect_initial_s: 60\n    reconnect_max_s: 5\n")


def test_a_path_with_a_nul_character_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"state_dir .*NUL"):
        config.parse('state_dir: "/var/lib/inspectd\\0x"\n')


@pytest.mark.parametrize("pattern", [
    "(?P<part>(a+)+)",  # the nested quantifier
    "(?P<part>x*)*y",  # a repeated part that can match nothing
    "^(?P<part>(a|a)*)$",  # alternatives that match the same text
    "(?P<part>(a|aa)+)$",
    r"^(?P<part>(\d+-?)+)_",
    r"(?P<part>(\w+\s?)+)$",
    "(?P<part>.*)_.*_.*_.*",  # polynomial: four loops over the same text, searched from every position
])
def test_a_part_id_pattern_that_can_backtrack_for_ever_is_refused(pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(FOLDER + f"    part_id_pattern: '{pattern}'\n", origin="cfg.yaml")
    message = str(info.value)
    assert message.startswith("cfg.yaml (line 4): sources.0.part_id_pattern")
    assert "the pattern can take" in message and "\n" not in message


@pytest.mark.parametrize(("pattern", "expected"), [
    ("(?P<part>[A-Z]", "not a valid regular expression"),
    (r"^([A-Z]+-\d+)_", "needs the named group (?P<part>...)"),
    ("(?P<part>x)" + "y" * 300, "too long"),
])
def test_a_part_id_pattern_is_compiled_when_the_config_is_read(pattern: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(expected)):
        config.parse(FOLDER + f"    part_id_pattern: '{pattern}'\n")


@pytest.mark.parametrize("pattern", [
    r"^(?P<part>[A-Z]+-\d+)_",  # the example in config.yaml
    r"(?P<part>[A-Z]-\d+)_field\d+",
    r"^(?P<part>.*)_field\d+\.png$",
    r"(?P<part>[^_]+)_",
    r"^(?P<part>(?:[A-Z]+-)+\d+)",
    r"(?i)^(?P<part>lot\d{1,6})",
])
def test_ordinary_part_id_patterns_are_accepted(pattern: str) -> None:
    cfg = config.parse(FOLDER + f"    part_id_pattern: '{pattern}'\n")
    assert cfg.sources[0].part_id_pattern == pattern


@pytest.mark.parametrize(("text", "key"), [
    ("control:\n  bind: not-an-endpoint\n", "control.bind"),
    ("publish:\n  bind: ['tcp://host:notaport']\n", "publish.bind.0"),
    ("publish:\n  bind: ['tcp://127.0.0.1:5556', 'tcp://127.0.0.1:70000']\n", "publish.bind.1"),
    ("publish:\n  bind: ['tcp://:5556']\n", "publish.bind.0"),
    ("publish:\n  bind: ['tcp://127.0.0.1']\n", "publish.bind.0"),
    ("publish:\n  bind: ['udp://127.0.0.1:5556']\n", "publish.bind.0"),
    ("publish:\n  bind: ['tcp://300.1.1.1:5556']\n", "publish.bind.0"),
    ("publish:\n  bind: ['tcp://bad host:5556']\n", "publish.bind.0"),
    ("publish:\n  bind: []\n", "publish.bind"),
    ("control:\n  bind: 'ipc://" + "/x" * 60 + "'\n", "control.bind"),
    (CAMERA + "    trigger_endpoint: tcp://127.0.0.1:-1\n", "sources.0.trigger_endpoint"),
    ("metrics:\n  host: 'not a host'\n", "metrics.host"),
    ("metrics:\n  host: '*'\n", "metrics.host"),
])
def test_endpoints_are_parsed(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, origin="cfg.yaml")
    assert f": {key} = " in str(info.value)


@pytest.mark.parametrize("endpoint", [
    "tcp://127.0.0.1:5556", "tcp://*:5556", "tcp://127.0.0.1:*", "tcp://0.0.0.0:0", "tcp://[::1]:5556",
    "tcp://eth0:5556", "tcp://station-3.local:5556", "ipc:///run/inspectd/pub.sock", "inproc://verdicts",
])
def test_valid_endpoints_are_accepted(endpoint: str) -> None:
    assert config.parse(f"publish:\n  bind: ['{endpoint}']\n").publish.bind == [endpoint]


@pytest.mark.parametrize(("text", "expected"), [
    ("publish:\n  bind: ['tcp://127.0.0.1:5557']\n", "control.bind 'tcp://127.0.0.1:5557' asks for the address "
     "publish.bind.0 binds already"),
    ("publish:\n  bind: ['tcp://*:6000', 'tcp://127.0.0.1:6000']\n", "publish.bind.1"),
    ("metrics:\n  port: 5556\n", "metrics 'tcp://127.0.0.1:5556'"),
    (CAMERA + "    trigger_endpoint: tcp://127.0.0.1:5556\n", "sources.0.trigger_endpoint"),
    (CAMERA + "    id: a\n  - kind: aravis\n    id: b\n    mode: triggered\n", "sources.1.trigger_endpoint"),
])
def test_two_sockets_cannot_bind_one_address(text: str, expected: str) -> None:
    """A clash would only show at start-up as "address in use", exit 1, retried for ever."""
    with pytest.raises(ConfigError, match=re.escape(expected)):
        config.parse(text)


def test_any_free_port_never_clashes() -> None:
    cfg = config.parse("publish:\n  bind: ['tcp://127.0.0.1:*', 'tcp://127.0.0.1:*']\ncontrol:\n  bind: tcp://127.0.0.1:*\n")
    assert cfg.control.bind == "tcp://127.0.0.1:*"


@pytest.mark.parametrize(("text", "line", "expected"), [
    ("sources:\n  - kind: folder\n    path: /a\n  - kind: folder\n    path: /b\n", 4,
     "sources.1.id: 'folder' is already the id of sources.0"),
    ("sources:\n  - {kind: folder, id: cam, path: /a}\n  - {kind: opencv, id: cam}\n", 3,
     "sources.1.id: 'cam' is already the id of sources.0"),
])
def test_duplicate_source_ids_are_refused(text: str, line: int, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config.parse(text, origin="cfg.yaml")
    assert str(info.value) == f"cfg.yaml (line {line}): {expected}; give each source its own id"


def test_unknown_engine_is_a_config_error_with_the_line() -> None:
    with pytest.raises(ConfigError, match=r"cfg\.yaml \(line 3\): segment\.engine = 'nope': not an engine"):
        config.parse("station: s1\nsegment:\n  engine: nope\n", origin="cfg.yaml")


def test_a_key_with_control_characters_is_shown_escaped() -> None:
    with pytest.raises(ConfigError) as info:
        config.parse('"bogus\\nlevel=INFO": 1\n')
    assert "\n" not in str(info.value) and "'bogus\\nlevel=INFO'" in str(info.value)


@pytest.mark.parametrize("loader", ["register map", "node map"])
@pytest.mark.parametrize(("content", "expected"), [
    (_alias_bomb_in_mappings(), "its aliases expand it"),
    ("seq_lo: 50\nseq_lo: 51\n", "duplicate key 'seq_lo'"),
    ("a: " + "{b: " * 100 + "1" + "}" * 100 + "\n", "nested more than 32 levels"),
])
def test_the_plc_bridges_read_their_maps_with_the_same_limits(tmp_path, loader: str, content: str,
                                                              expected: str) -> None:
    from inspectd.bridges.opcua import load_node_map
    from inspectd.bridges.registermap import load_register_map

    path = tmp_path / "map.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        (load_register_map if loader == "register map" else load_node_map)(path)
