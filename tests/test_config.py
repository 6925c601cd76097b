"""Configuration: TOML plus environment overrides, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "ollamesh.example.toml"


def test_the_documented_example_is_the_defaults() -> None:
    """deploy/ollamesh.example.toml shows every default as it really is."""
    assert load_config(EXAMPLE, env={}) == Config()


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    """NATS_URL, OLLAMA_HOSTS and OLLAMESH_PREFIX win over the file."""
    f = tmp_path / "c.toml"
    f.write_text('prefix = "a"\n[executor]\nmax_inflight_per_model = 2\n')
    env = {
        "NATS_URL": "nats://x:1",
        "OLLAMA_HOSTS": "http://h1:1, http://h2:2",
        "OLLAMESH_PREFIX": "b",
    }
    config = load_config(f, env=env)
    assert config.nats.url == "nats://x:1" and config.prefix == "b"
    assert config.ollama_hosts == ["http://h1:1", "http://h2:2"]
    assert config.executor.max_inflight_per_model == 2


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param(
            "[executor]\nmax_inflight_per_model = 0\n", "max_inflight_per_model", id="zero-cap"
        ),
        pytest.param("[executor]\nnot_a_setting = 1\n", "not_a_setting", id="unknown-key"),
        pytest.param("prefix = \n", "cannot read", id="bad-toml"),
        pytest.param("ollama_hosts = []\n", "ollama_hosts is empty", id="no-hosts"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, says: str) -> None:
    """A wrong setting names itself instead of failing later."""
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=says):
        load_config(f, env={})


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """Naming a config file that is not there is an error, not silent defaults."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml", env={})
