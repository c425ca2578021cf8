"""Tests of fleetbridge.config: the YAML loader, validation and error messages."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import voluptuous as vol

from fleetbridge.config import (
    Config,
    HttpConfig,
    MqttConfig,
    YamlDict,
    YamlList,
    account_secrets,
    load_config,
    load_yaml,
)
from fleetbridge.errors import ConfigError
from fleetbridge.platform import BASE_ACCOUNT_SCHEMA, Platform
from fleetbridge.validate import number

FIXTURES = Path(__file__).parent / "fixtures" / "config"


class FakePlatform(Platform):
    """A platform with one credential pair, one option and two services."""

    name = "fake"
    title = "Fake"
    CONFIG_SCHEMA = BASE_ACCOUNT_SCHEMA.extend({
        vol.Required("account"): str,
        vol.Required("password"): str,
        vol.Optional("limit", default=20): number,
    })
    SECRET_KEYS = ("password",)
    SERVICES = ("engine_stop", "reboot")


PLATFORMS: dict[str, type[Platform]] = {"fake": FakePlatform}

ACCOUNT = """\
accounts:
  - platform: fake
    name: Delivery vans
    account: vans
    password: hunter22
"""


def write(folder: Path, text: str, secrets: str | None = None) -> Path:
    """Write ``config.yaml`` (and ``secrets.yaml``) into ``folder``; return the config path."""
    if secrets is not None:
        (folder / "secrets.yaml").write_text(textwrap.dedent(secrets))
    path = folder / "config.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load(folder: Path, text: str, secrets: str | None = None, **kwargs) -> Config:
    return load_config(write(folder, text, secrets), PLATFORMS, **kwargs)


def error(folder: Path, text: str, secrets: str | None = None, **kwargs) -> str:
    """The message of the ConfigError that loading ``text`` raises."""
    with pytest.raises(ConfigError) as info:
        load(folder, text, secrets, **kwargs)
    return str(info.value)


# --- good configs ---------------------------------------------------------------------------


def test_minimal_config_fills_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, ACCOUNT)
    assert config.path == tmp_path / "config.yaml"
    assert config.mqtt is None  # the runner starts an embedded broker
    assert config.http is None
    assert config.log_level is None
    assert config.storage == tmp_path / "fleetbridge.db"
    [account] = config.accounts
    assert (account.id, account.name, account.platform, account.line) == (
        "delivery_vans", "Delivery vans", "fake", 2)
    assert account.disabled_reason is None
    data = account.data
    assert type(data) is dict and data["id"] == "delivery_vans"
    assert data["limit"] == 20.0
    assert data["timeout"] == 30 and data["verify_tls"] is True and data["enabled"] is True
    assert data["services"] == {"engine_stop": False, "reboot": True}  # dangerous ones off


def test_full_fixture(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "full.yaml", tmp_path / "config.yaml")
    shutil.copy(FIXTURES / "secrets.example.yaml", tmp_path / "secrets.yaml")
    config = load_config(tmp_path / "config.yaml", PLATFORMS)
    assert config.mqtt == MqttConfig(
        host="broker.example.com", port=8883, username="bridge", password="mqtt-hunter2", tls=True,
        ca_file=str(tmp_path / "certs" / "ca.pem"), base_topic="fleet", discovery_mode="entity",
        heartbeat=300.0,
    )
    assert config.storage == tmp_path / "data" / "fleet.db"
    assert config.http == HttpConfig(port=8100)
    assert config.log_level == "DEBUG"
    vans, trailers = config.accounts
    assert vans.data["account"] == "vans-account" and vans.data["password"] == "vans-hunter2"
    assert vans.data["scan_interval"] == 60.0
    assert vans.data["services"] == {"engine_stop": True, "reboot": True}
    assert (trailers.id, trailers.line, trailers.data["limit"]) == ("trailers-eu", 24, 5.0)
    assert trailers.data["enabled"] is False
    assert config.secrets == {"mqtt-hunter2", "vans-account", "vans-hunter2", "trailer-pass"}


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "mqtt:\nhttp:\naccounts: []\n")
    assert config.mqtt == MqttConfig()
    assert config.http == HttpConfig()
    assert config.accounts == []


def test_storage_paths(tmp_path: Path) -> None:
    absolute = tmp_path / "elsewhere" / "x.db"
    assert load(tmp_path, f"storage: {absolute}\naccounts: []\n").storage == absolute
    assert load(tmp_path, "storage: db/x.db\naccounts: []\n").storage == tmp_path / "db" / "x.db"


def test_service_can_be_disabled(tmp_path: Path) -> None:
    config = load(tmp_path, ACCOUNT + "    services:\n      reboot: false\n      engine_stop: true\n")
    assert config.accounts[0].data["services"] == {"engine_stop": True, "reboot": False}


# --- !secret and !env -----------------------------------------------------------------------


def test_secret_tag(tmp_path: Path) -> None:
    text = ACCOUNT.replace("hunter22", "!secret vans_password")
    config = load(tmp_path, text, secrets="vans_password: s3cr3t-pass\n")
    assert config.accounts[0].data["password"] == "s3cr3t-pass"
    assert "s3cr3t-pass" in config.secrets


def test_secret_missing_key(tmp_path: Path) -> None:
    text = ACCOUNT.replace("hunter22", "!secret nope")
    message = error(tmp_path, text, secrets="other: value\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}, line 5: ")
    assert "'nope'" in message and "secrets.yaml" in message


def test_secret_missing_file(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT.replace("hunter22", "!secret vans_password"))
    assert "config.yaml, line 5: " in message and "secrets.yaml" in message


def test_env_tag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FB_PASSWORD", "from-env")
    monkeypatch.setenv("FB_PORT", "1884")
    monkeypatch.delenv("FB_HOST", raising=False)
    text = "mqtt:\n  host: !env FB_HOST broker.lan\n  port: !env_var FB_PORT\n" + ACCOUNT.replace(
        "hunter22", "!env FB_PASSWORD")
    config = load(tmp_path, text)
    assert config.mqtt is not None and (config.mqtt.host, config.mqtt.port) == ("broker.lan", 1884)
    assert config.accounts[0].data["password"] == "from-env"


def test_env_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FB_NOT_SET", raising=False)
    message = error(tmp_path, ACCOUNT.replace("hunter22", "!env FB_NOT_SET"))
    assert "config.yaml, line 5: " in message and "'FB_NOT_SET' is not set" in message


# --- account errors -------------------------------------------------------------------------


def test_duplicate_ids(tmp_path: Path) -> None:
    text = ACCOUNT + "  - platform: fake\n    name: Delivery Vans!\n    account: b\n    password: bbbb\n"
    message = error(tmp_path, text)
    assert message.endswith("config.yaml, line 6: accounts[1] (Delivery Vans!) 'id': duplicate account "
                            "id 'delivery_vans' (also accounts[0] on line 2); give one of them "
                            "another 'id:'")


def test_typo_in_key(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT + "    scan_intervall: 30\n")
    assert message.endswith("config.yaml, line 6: accounts[0] (Delivery vans): unknown key "
                            "'scan_intervall' (did you mean 'scan_interval'?)")


@pytest.mark.parametrize("line, problem", [
    ("scan_interval: .inf", "'scan_interval': expected a finite number, got inf"),
    ("scan_interval: .nan", "'scan_interval': expected a finite number, got nan"),
    ("scan_interval: true", "'scan_interval': expected a number, got true"),
    ("scan_interval: 1" + "0" * 400, "'scan_interval': expected a number, got 1000"),
    ("offline_grace: 1.5", "'offline_grace': expected an integer, got 1.5"),
    ("offline_grace: '2 '", None),
])
def test_numbers_are_finite_and_integers_whole(tmp_path: Path, line: str, problem: str | None) -> None:
    """``vol.Coerce`` let .inf/.nan/true through, truncated 1.5 and crashed on a 400-digit number."""
    if problem is None:
        assert load(tmp_path, ACCOUNT + "    " + line + "\n").accounts[0].data["offline_grace"] == 2
        return
    assert problem in error(tmp_path, ACCOUNT + "    " + line + "\n")


def test_missing_credential_points_at_account(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT.replace("    password: hunter22\n", ""))
    assert message.endswith("config.yaml, line 2: accounts[0] (Delivery vans): "
                            "required key 'password' is missing")


def test_wrong_type_points_at_key(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT + "    scan_interval: abc\n")
    assert message.endswith("config.yaml, line 6: accounts[0] (Delivery vans) 'scan_interval': "
                            "expected a number, got 'abc'")


def test_nested_error_path(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT + "    simulator:\n      devices: 0\n")
    assert "line 7: accounts[0] (Delivery vans) 'simulator.devices': " in message
    assert message.endswith(", got 0")


def test_every_error_reported_sorted_by_line(tmp_path: Path) -> None:
    text = "log_level: loud\n" + ACCOUNT + "    timeout: 0\n    limit: many\n"
    lines = error(tmp_path, text).splitlines()
    assert [line.split(":")[0].rsplit(", ", 1)[1] for line in lines] == ["line 1", "line 7", "line 8"]
    assert "log_level: must be one of debug" in lines[0]


def test_unknown_platform(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT.replace("fake", "faek"))
    assert message.endswith("config.yaml, line 2: accounts[0] (Delivery vans) 'platform': unknown "
                            "platform 'faek' (did you mean 'fake'? installed: fake)")


def test_unavailable_platform_disables_account(tmp_path: Path) -> None:
    text = ACCOUNT + "  - platform: broken\n    name: Broken one\n    api_key: k-12345\n"
    config = load(tmp_path, text, unavailable={"broken": "ImportError: no module named x"})
    broken = config.accounts[1]
    assert (broken.id, broken.platform, broken.line) == ("broken_one", "broken", 6)
    assert broken.disabled_reason == "ImportError: no module named x"
    assert broken.data["api_key"] == "k-12345" and broken.data["timeout"] == 30


def test_bad_service_name(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT + "    services:\n      engine_stp: true\n      sms: true\n")
    assert "line 7: accounts[0] (Delivery vans) 'services': unknown service 'engine_stp' " \
           "(did you mean 'engine_stop'?)" in message
    assert "line 8: accounts[0] (Delivery vans) 'services': unknown service 'sms' " \
           "(offered: engine_stop, reboot)" in message


def test_account_not_a_mapping(tmp_path: Path) -> None:
    message = error(tmp_path, "accounts:\n  - fake\n")
    assert message.endswith("line 2: accounts[0]: expected a mapping of account settings, got 'fake'")


# --- file-level errors ----------------------------------------------------------------------


def test_malformed_yaml(tmp_path: Path) -> None:
    message = error(tmp_path, "accounts:\n  - platform: fake\n    name: [x\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}, line 4, column 1: ")
    assert "started on line 3" in message


def test_control_character(tmp_path: Path) -> None:
    message = error(tmp_path, "accounts: []\nx: a\x01b\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}, line 2, column 5: ")


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    message = error(tmp_path, ACCOUNT + "    account: again\n")
    assert message.endswith("config.yaml, line 6: duplicate key 'account' (first on line 4)")


def test_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = """\
    defaults: &defaults
      account: shared
      password: shared-pass
    accounts:
      - <<: *defaults
        platform: fake
        name: One
        password: own-pass
    """
    message = error(tmp_path, text)  # `defaults` is not a known top-level key
    assert message.endswith("config.yaml, line 1: unknown key 'defaults'")
    data = load_yaml(tmp_path / "config.yaml")["accounts"][0]
    assert data["password"] == "own-pass" and data["account"] == "shared"


@pytest.mark.parametrize("text", ["", "# nothing\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert "is empty" in error(tmp_path, text)


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    assert error(tmp_path, "- a\n- b\n").endswith("config.yaml, line 1: expected a mapping of "
                                                  "settings, got a list")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml", PLATFORMS)


def test_unknown_top_level_key_and_missing_accounts(tmp_path: Path) -> None:
    lines = error(tmp_path, "mqtt:\n  host: x\nmqt: {}\n").splitlines()
    assert lines[0].endswith("config.yaml, line 1: required key 'accounts' is missing")
    assert lines[1].endswith("config.yaml, line 3: unknown key 'mqt' (did you mean 'mqtt'?)")


def test_mqtt_errors(tmp_path: Path) -> None:
    text = "mqtt:\n  prot: 1\n  qos: 2\n  ca_file: ca.pem\n  base_topic: a/#\n" + ACCOUNT
    message = error(tmp_path, text)
    assert "line 2: mqtt: unknown key 'prot' (did you mean 'port'?)" in message
    assert "line 3: mqtt 'qos': value must be one of [0, 1], got 2" in message
    assert "line 5: mqtt 'base_topic': must be an MQTT topic prefix" in message


def test_tls_files_need_tls(tmp_path: Path) -> None:
    message = error(tmp_path, "mqtt:\n  ca_file: ca.pem\n  tls_insecure: true\n" + ACCOUNT)
    assert "line 2: mqtt 'ca_file': needs 'tls: true'" in message
    assert "line 3: mqtt 'tls_insecure': needs 'tls: true'" in message


# --- secrets --------------------------------------------------------------------------------


def test_secret_values_never_in_messages(tmp_path: Path) -> None:
    text = """\
    mqtt:
      password: [mqtt-hunter2]
    accounts:
      - platform: fake
        name: Vans
        account: !secret vans_account
        password: 12345678
        limit: !secret vans_limit
      - platform: nope
        name: vans-account
        password: pw-in-unknown-platform
        timeout: pw-in-unknown-platform
    """
    secrets = "vans_account: [the-account]\nvans_limit: limit-secret\n"
    message = error(tmp_path, text, secrets)
    for secret in ("mqtt-hunter2", "the-account", "12345678", "limit-secret", "pw-in-unknown-platform"):
        assert secret not in message
    assert "line 7: accounts[0] (Vans) 'password': expected a string, got ***" in message
    assert "line 8: accounts[0] (Vans) 'limit': expected a number, got ***" in message
    assert "line 2: mqtt 'password': expected a string, got ***" in message


def test_secrets_collected(tmp_path: Path) -> None:
    text = """\
    mqtt:
      password: mqtt-pass
      username: !secret mqtt_user
    accounts:
      - platform: fake
        name: Vans
        account: !secret short
        password: vans-pass
    """
    config = load(tmp_path, text, secrets="mqtt_user: the-user\nshort: abc\n")
    assert config.secrets == {"mqtt-pass", "the-user", "vans-pass"}  # "abc" is too short


def test_account_secrets() -> None:
    data = {"password": "long-enough", "account": "not-secret"}
    assert account_secrets(FakePlatform, data) == {"long-enough"}
    assert account_secrets(FakePlatform, {"password": "abc"}) == set()


# --- the loader alone -----------------------------------------------------------------------


def test_load_yaml_records_lines(tmp_path: Path) -> None:
    path = write(tmp_path, "a: 1\nb:\n  - x\n  -\n    c: 2\nd:\n  3\n")
    data = load_yaml(path)
    assert isinstance(data, YamlDict) and isinstance(data["b"], YamlList)
    assert data.lines == {"a": 1, "b": 2, "d": 6} and data.value_lines["d"] == 7
    assert data["b"].lines == {0: 3, 1: 5} and data["b"][1].line == 5
    assert data["b"].line_of(1) == 5 and data["b"][1].line_of("missing") == 5
    assert data.file == str(path)


# --- hostile YAML ----------------------------------------------------------------------------


@pytest.mark.parametrize("text, problem", [
    ("accounts:\n  - platform: fake\n    name: X\n    limit: &a [*a]\n",
     "line 4: this value contains itself (a recursive alias)"),
    ("accounts:\n  - &acc\n    platform: fake\n    name: X\n    me: *acc\n",
     "line 2: this value contains itself (a recursive alias)"),
    # 500: past Python's recursion limit in the old walks, below PyYAML 6.0.4's own limit of 1,000
    ("accounts: " + "[" * 500 + "]" * 500 + "\n", "line 1: nested deeper than 32 levels"),
    ("".join(f"{k}: &{k} [{', '.join([f'*{p}' if p else '1'] * 10)}]\n"
             for p, k in zip([None, *"abcdefg"], "abcdefgh")) + "accounts: []\n",
     "line 6: aliases expand this value to more than 1,000,000 values"),
], ids=["recursive-list", "recursive-map", "deep", "billion-laughs"])
def test_yaml_that_no_setting_means_is_refused_with_its_line(tmp_path: Path, text: str, problem: str) -> None:
    """Each of these used to end in RecursionError (or a minute of walking), not a config error."""
    assert problem in error(tmp_path, text)


HOSTILE = [".inf", "-.inf", ".nan", "1" + "0" * 400, "-1", "0", "1.5", "true", "null", "''", "[]", "{}",
           "[1, 2]", "{a: 1}", "!!binary aGVsbG8=", "2026-01-01", "0x10", "1e3", "'  '", "'1e999'", "'nan'",
           "&a [*a]", "!!set {a}", "9223372036854775808"]


def test_every_platform_key_takes_hostile_values_as_a_config_error(tmp_path: Path) -> None:
    """Every key of every built-in platform, each hostile value: the config loads or ConfigError
    names the problem, never another exception."""
    from fleetbridge.plugins import load_plugins

    platforms = load_plugins().platforms
    config = tmp_path / "config.yaml"
    tried = 0
    for name, cls in platforms.items():
        for key in (str(k) for k in cls.CONFIG_SCHEMA.schema):
            for value in HOSTILE:
                config.write_text(f"accounts:\n  - platform: {name}\n    name: X\n    {key}: {value}\n")
                try:
                    load_config(config, platforms)
                except ConfigError as err:
                    assert "config.yaml" in str(err)
                tried += 1
    assert tried > 500
