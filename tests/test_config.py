"""Configuration: TOML plus environment overrides, with clear errors."""

from __future__ import annotations

import asyncio
import re
import sys
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


@pytest.mark.parametrize(
    ("text", "says"),
    [
        pytest.param('log_level = "loud"\n', "log_level: 'loud'", id="log-level"),
        pytest.param('log_format = "xml"\n', "log_format: 'xml'", id="log-format"),
        pytest.param('prefix = "a.b"\n', "prefix: 'a.b' is not a subject token", id="prefix"),
        pytest.param('ollama_hosts = ["gpu-1:11434"]\n', "ollama_hosts[0]", id="host-no-scheme"),
        pytest.param('ollama_hosts = ["http://h:99999"]\n', "has a port", id="host-port"),
        pytest.param('[executor.host_slots]\n"h:1" = 2\n', "executor.host_slots", id="slots-url"),
        pytest.param('[routing]\ncandidates = ["primry"]\n', "routing.candidates: 'primry' is no role", id="candidate"),
        pytest.param('[routing]\ndefault_fallbacks = ["bakup"]\n', "routing.default_fallbacks", id="default-fallback"),
        pytest.param('[routing.fallbacks]\nprimary = ["fst"]\n', "routing.fallbacks.primary: 'fst'", id="fallback"),
        pytest.param('[health]\npin = ["fats"]\n', "health.pin: 'fats'", id="pin"),
        pytest.param('[health]\nwarm = ["visoin"]\n', "health.warm", id="warm"),
        pytest.param('[load_options.primray]\nnum_ctx = 8\n', "load_options: 'primray'", id="load-options"),
        pytest.param("[executor]\nfirst_token_timeout_s = 700.0\n", "first_token_timeout_s is over", id="first-token"),
        pytest.param("[executor]\nretry_backoff_ms = 5000\n", "retry_backoff_ms is over", id="backoff"),
        pytest.param("[executor]\nregistry_ttl_s = 2.0\n", "registry_ttl_s must be over", id="registry-ttl"),
        pytest.param("[health]\ntimeout_s = 9.0\n", "health.timeout_s is over", id="health-timeout"),
    ],
)  # fmt: skip
def test_each_inconsistent_setting_is_named(tmp_path: Path, text: str, says: str) -> None:
    """One pass at load checks names, URLs, timeouts, logging and the prefix."""
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(f, env={})


def test_model_names_with_a_tag_and_roles_pass(tmp_path: Path) -> None:
    """Roles and tagged or namespaced model names are fine wherever models are named."""
    f = tmp_path / "c.toml"
    f.write_text(
        '[routing]\ncandidates = ["primary", "llama3.2:3b", "library/qwen"]\n'
        '[health]\npin = ["fast", "mistral:7b"]\n'
    )
    assert load_config(f, env={}).routing.candidates[1] == "llama3.2:3b"


async def test_up_with_every_problem_prints_one_line_each_and_exits_2(tmp_path: Path) -> None:
    """`ollamesh up` on a config with two problems: two lines, exit 2, no traceback."""
    f = tmp_path / "c.toml"
    f.write_text('log_level = "loud"\n[health]\npin = ["fats"]\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors", "up", "--config", str(f),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, lines
    assert all(line.startswith("error: ") for line in lines) and "Traceback" not in err.decode()


def test_the_gateway_port_from_the_environment() -> None:
    """`OLLAMESH_GATEWAY_PORT` wins over the file; anything but a port is one clear error."""
    assert load_config(env={"OLLAMESH_GATEWAY_PORT": "0"}).gateway.port == 0
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ConfigError, match="OLLAMESH_GATEWAY_PORT is a port"):
            load_config(env={"OLLAMESH_GATEWAY_PORT": bad})
