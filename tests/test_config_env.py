"""NatsConfig from natscli's environment variables and contexts; secrets never shown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from natsbus import ConfigError, NatsConfig
from natsbus.config import redact_url

SECRET = "s3cr3t-sentinel"


def test_every_natscli_variable_reaches_the_config() -> None:
    env = {
        "NATS_URL": "nats://a:4222,nats://b:4222",
        "NATS_USER": "user-sentinel",
        "NATS_PASSWORD": "password-sentinel",
        "NATS_TOKEN": "token-sentinel",
        "NATS_NKEY": "/keys/nkey-sentinel.nk",
        "NATS_CREDS": "/keys/creds-sentinel.creds",
    }
    config = NatsConfig.from_env(env)
    assert config.servers == ("nats://a:4222", "nats://b:4222")
    assert (config.user, config.password, config.token) == ("user-sentinel", "password-sentinel", "token-sentinel")
    assert config.nkeys_seed == "/keys/nkey-sentinel.nk"
    assert config.user_credentials == "/keys/creds-sentinel.creds"


def test_nats_nkey_seed_is_read_as_an_older_name_and_nats_nkey_wins() -> None:
    assert NatsConfig.from_env({"NATS_NKEY_SEED": "/old.nk"}).nkeys_seed == "/old.nk"
    assert NatsConfig.from_env({"NATS_NKEY_SEED": "/old.nk", "NATS_NKEY": "/new.nk"}).nkeys_seed == "/new.nk"


def _context(tmp_path: Path, name: str, **settings: str) -> dict:  # type: ignore[type-arg]
    folder = tmp_path / "nats" / "context"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"description": "test", **settings}))
    return {"XDG_CONFIG_HOME": str(tmp_path), "NATS_CONTEXT": name}


def test_a_natscli_context_supplies_what_the_variables_do_not(tmp_path: Path) -> None:
    env = _context(
        tmp_path, "prod", url="nats://ctx:4222", user="ctx-user", password="ctx-pass", creds="/ctx.creds", nkey=""
    )
    config = NatsConfig.from_env({**env, "NATS_USER": "env-user"})
    assert config.servers == ("nats://ctx:4222",)
    assert config.user == "env-user"  # an explicit variable wins, as in natscli
    assert config.password == "ctx-pass"
    assert config.user_credentials == "/ctx.creds"
    assert config.nkeys_seed is None  # empty settings are not used


def test_a_context_given_as_a_path_is_read(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"url": "nats://path:4222", "token": "tok"}))
    config = NatsConfig.from_env({"NATS_CONTEXT": str(path)})
    assert (config.servers, config.token) == (("nats://path:4222",), "tok")


def test_a_missing_or_broken_context_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"NATS_CONTEXT 'nope': cannot read .*nope\.json"):
        NatsConfig.from_env({"XDG_CONFIG_HOME": str(tmp_path), "NATS_CONTEXT": "nope"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not valid JSON"):
        NatsConfig.from_env({"NATS_CONTEXT": str(bad)})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"nats://alice:{SECRET}@host:4222", "nats://alice:***@host:4222"),
        (f"tls://{SECRET}@host:4222", "tls://***@host:4222"),
        ("nats://host:4222", "nats://host:4222"),
    ],
)
def test_redact_url_hides_passwords_and_tokens(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_no_secret_in_the_repr_of_a_config() -> None:
    config = NatsConfig(servers=f"nats://alice:{SECRET}@host:4222", password=SECRET, token=SECRET)
    assert SECRET not in repr(config)
    assert "nats://alice:***@host:4222" in repr(config)
