"""Node configuration: defaults < moonwire.yaml < MOONWIRE_* < flags, with sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from moonwire.node import ConfigError, load_config
from support import run_cli, write_project


def test_defaults(tmp_path: Path) -> None:
    resolved = load_config(tmp_path, environ={})
    config = resolved.config
    assert config.prefix == "mw"
    assert config.nats.url == []  # embedded
    assert config.heartbeat.down_after <= 3.0
    assert config.shutdown_timeout == 30.0
    assert resolved.state_dir == (tmp_path / ".moonwire").resolve()
    assert resolved.sources == {}
    assert all(source == "default" for _, _, source in resolved.describe())


def test_precedence_yaml_then_env_then_flags(tmp_path: Path) -> None:
    write_project(tmp_path, {"moonwire.yaml": """
        node: from-yaml
        prefix: tenant1
        nats:
          url: nats://yaml:4222
        heartbeat:
          interval: 1s
        shutdown_timeout: 7s
        log:
          level: debug
    """})
    environ = {"MOONWIRE_NODE": "from-env", "MOONWIRE_NATS_URL": "nats://a:1,nats://b:2", "MOONWIRE_LOG_LEVEL": "WARNING"}
    flags = {"node": ("from-flag", "--node")}
    resolved = load_config(tmp_path, environ=environ, flags=flags)
    config = resolved.config
    assert config.node == "from-flag"
    assert config.nats.url == ["nats://a:1", "nats://b:2"]
    assert config.prefix == "tenant1"
    assert config.heartbeat.interval == 1.0
    assert config.shutdown_timeout == 7.0
    assert config.log.level == "warning"
    assert resolved.sources["node"] == "flag --node"
    assert resolved.sources["nats.url"] == "env MOONWIRE_NATS_URL"
    assert resolved.sources["prefix"] == "moonwire.yaml:2"
    assert resolved.sources["heartbeat.interval"] == "moonwire.yaml:6"
    assert "heartbeat.down_after" not in resolved.sources


def test_every_problem_is_listed_with_its_source(tmp_path: Path) -> None:
    write_project(tmp_path, {"moonwire.yaml": """
        node: "bad name"
        heartbeat:
          interval: 5
    """})
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path, environ={"MOONWIRE_LOG_FORMAT": "xml"})
    text = "\n".join(caught.value.problems)
    assert "moonwire.yaml:1 node:" in text and "not a valid node name" in text
    assert "moonwire.yaml:3 heartbeat.interval:" in text and "needs a unit" in text
    assert "env MOONWIRE_LOG_FORMAT log.format:" in text
    assert len(caught.value.problems) == 3


def test_unknown_key_names_the_line(tmp_path: Path) -> None:
    write_project(tmp_path, {"moonwire.yaml": "node: n1\nnats:\n  urll: x\n"})
    with pytest.raises(ConfigError, match=r"moonwire.yaml:3 nats.urll: unknown configuration key"):
        load_config(tmp_path, environ={})


def test_default_node_name_is_a_subject_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "my.host name")
    assert load_config(tmp_path, environ={}).config.node == "my-host-name"


def test_secrets_are_masked(tmp_path: Path) -> None:
    resolved = load_config(tmp_path, environ={"MOONWIRE_NATS_PASSWORD": "hunter2"})
    rows = {key: (value, source) for key, value, source in resolved.describe()}
    assert rows["nats.password"] == ("***", "env MOONWIRE_NATS_PASSWORD")


async def test_config_command_prints_values_and_sources(tmp_path: Path) -> None:
    write_project(tmp_path, {"moonwire.yaml": "prefix: t2\n"})
    code, out, err = await run_cli("config", str(tmp_path), "--node", "n7", "--set", "heartbeat.interval=250ms",
                                   env={"MOONWIRE_SHUTDOWN_TIMEOUT": "1m30s"})
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines["node"].split()[1:] == ["n7", "(flag", "--node)"]
    assert "t2" in lines["prefix"] and "(moonwire.yaml:1)" in lines["prefix"]
    assert "250ms" in lines["heartbeat.interval"] and "--set heartbeat.interval" in lines["heartbeat.interval"]
    assert "1m30s" in lines["shutdown_timeout"] and "env MOONWIRE_SHUTDOWN_TIMEOUT" in lines["shutdown_timeout"]


async def test_config_command_rejects_bad_values(tmp_path: Path) -> None:
    code, _, err = await run_cli("config", str(tmp_path), "--set", "shutdown_timeout=soon")
    assert code == 2
    assert "shutdown_timeout" in err and "invalid duration 'soon'" in err
