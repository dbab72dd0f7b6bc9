"""The config model: defaults documented in config.yaml, strict validation with key paths."""

from __future__ import annotations

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
