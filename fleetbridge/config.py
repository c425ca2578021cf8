"""Load and validate the YAML configuration (see "Config shape" in the design notes).

Every problem raises :class:`~fleetbridge.errors.ConfigError` whose message holds one line per
problem, sorted by line: ``config.yaml, line 12: accounts[0] (Delivery vans) 'scan_interval':
expected a number, got 'abc'``. A message never shows a secret value: values of a platform's
``SECRET_KEYS``, of the MQTT password and of every ``!secret`` print as ``***``.

Accounts are validated in two passes, as Home Assistant does: ``BASE_ACCOUNT_SCHEMA`` (extra keys
allowed) finds ``platform``, ``name`` and ``id``; then the platform's own ``CONFIG_SCHEMA`` applies.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import voluptuous as vol
import yaml

from .errors import ConfigError
from .platform import BASE_ACCOUNT_SCHEMA, Platform, slugify
from .services import SERVICE_BY_NAME
from .validate import integer, number

SECRETS_FILE = "secrets.yaml"
MIN_SECRET_LEN = 4  # shorter values are not collected: redacting them would garble every log line
REDACTED = "***"
MAX_DEPTH = 32  # levels of nesting a config may have (its deepest setting needs 5)
MAX_VALUES = 1_000_000  # values a config may expand to through its aliases
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

KeyPath = tuple[Any, ...]  # a key path: ("accounts", 0, "scan_interval")


# --------------------------------------------------------------------------------------------
# Result types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MqttConfig:
    """The ``mqtt:`` section. The loader picks port 8883 when ``tls`` is on and no port is set."""

    host: str = "localhost"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # absolute (relative paths are taken from the config's folder)
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False  # explicit opt-out of hostname/certificate verification
    client_id: str = "fleetbridge"
    base_topic: str = "fleetbridge"
    discovery_prefix: str = "homeassistant"
    discovery: bool = True
    discovery_mode: Literal["device", "entity"] = "device"
    keepalive: int = 60
    heartbeat: float = 0  # seconds between re-publishing unchanged state; 0: only on change
    device_triggers: bool = True  # one Home Assistant device trigger per event type
    qos: int = 1
    event_ledger: bool = True  # exactly-once events across a crash (fleetbridge/ledger.py)


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """The ``http:`` section (the local status/API server)."""

    host: str = "127.0.0.1"
    port: int = 8099
    enabled: bool = True


@dataclass(frozen=True, kw_only=True)
class AccountConfig:
    """One configured account: ``data`` is the validated dict (defaults and ``id`` filled).

    ``data["services"]`` maps every service of the platform to whether it is enabled (dangerous
    ones are off unless the file enables them). ``disabled_reason`` is set, and ``data`` only
    checked against ``BASE_ACCOUNT_SCHEMA``, when the platform's plugin failed to load.
    """

    id: str
    name: str
    platform: str
    data: dict[str, Any]
    line: int | None = None
    disabled_reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole validated configuration. ``mqtt`` is None when the file has no ``mqtt:``."""

    path: Path
    mqtt: MqttConfig | None
    storage: Path
    http: HttpConfig | None
    log_level: str | None
    accounts: list[AccountConfig]
    secrets: frozenset[str] = field(default_factory=frozenset)


# --------------------------------------------------------------------------------------------
# YAML with lines, !secret and !env
# --------------------------------------------------------------------------------------------


class _Located:
    """Where a YAML collection and its members sit.

    ``file``: the file it was read from; ``line``: its first line (1-based); ``lines``: key (or
    index) -> line of the key (or item); ``secret``: keys (or indexes) whose value is a ``!secret``.
    """

    file: str
    line: int
    lines: dict[Any, int]
    secret: set[Any]

    def line_of(self, key: Any) -> int:
        """The line of ``key`` (or item index), else the collection's own line."""
        return self.lines.get(key, self.line)


class YamlDict(_Located, dict):  # type: ignore[type-arg]
    """A YAML mapping; ``value_lines`` maps each key to the line where its value starts."""

    value_lines: dict[Any, int]


class YamlList(_Located, list):  # type: ignore[type-arg]
    """A YAML sequence."""


_MERGE_TAG = "tag:yaml.org,2002:merge"
_SECRET_TAG = "!secret"


class LineLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader (libyaml when available) building :class:`YamlDict`/:class:`YamlList`.

    Adds ``!secret name`` (from ``secrets.yaml`` beside the file), ``!env VAR [default]`` (alias
    ``!env_var``) and rejects duplicate keys.
    """

    def __init__(self, stream: str, *, file: str, secrets_path: Path | None = None) -> None:
        super().__init__(stream)
        self.file = file
        self.secrets_path = secrets_path  # None: !secret is not allowed (in secrets.yaml itself)
        self._secrets: Mapping[Any, Any] | None = None

    def _error(self, node: yaml.Node, problem: str) -> ConfigError:
        return ConfigError(f"{self.file}, line {node.start_mark.line + 1}: {problem}")

    def _place(self, data: _Located, node: yaml.Node) -> None:
        data.file, data.line = self.file, node.start_mark.line + 1
        data.lines, data.secret = {}, set()

    def construct_located_map(self, node: yaml.MappingNode) -> Iterator[YamlDict]:
        data = YamlDict()
        self._place(data, node)
        data.value_lines = {}
        yield data
        explicit = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
        self.flatten_mapping(node)  # merged (<<) pairs first, then the explicit ones
        first_explicit = len(node.value) - explicit
        explicit_lines: dict[Any, int] = {}
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node)
            if not isinstance(key, Hashable):
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found an unhashable key",
                    key_node.start_mark)
            line = key_node.start_mark.line + 1
            if index >= first_explicit:
                if key in explicit_lines:
                    first = explicit_lines[key]
                    raise self._error(key_node, f"duplicate key {key!r} (first on line {first})")
                explicit_lines[key] = line
            data[key] = self.construct_object(value_node)
            data.lines[key], data.value_lines[key] = line, value_node.start_mark.line + 1
            if value_node.tag == _SECRET_TAG:
                data.secret.add(key)

    def construct_located_seq(self, node: yaml.SequenceNode) -> Iterator[YamlList]:
        data = YamlList()
        self._place(data, node)
        yield data
        for index, item in enumerate(node.value):
            data.append(self.construct_object(item))
            data.lines[index] = item.start_mark.line + 1
            if item.tag == _SECRET_TAG:
                data.secret.add(index)

    def _argument(self, node: yaml.Node) -> str:
        text = self.construct_scalar(node).strip() if isinstance(node, yaml.ScalarNode) else ""
        if not text:
            raise self._error(node, f"{node.tag} needs a name after it")
        return text

    def construct_secret(self, node: yaml.Node) -> Any:
        name = self._argument(node)
        secrets = self._load_secrets(node)
        if name not in secrets:
            raise self._error(node, f"!secret {name!r} is not defined in {self.secrets_path}")
        return secrets[name]

    def _load_secrets(self, node: yaml.Node) -> Mapping[Any, Any]:
        if self.secrets_path is None:
            raise self._error(node, "!secret cannot be used in the secrets file itself")
        if self._secrets is None:
            if not self.secrets_path.is_file():
                raise self._error(node, f"!secret needs {self.secrets_path}, which does not exist")
            secrets = _parse(self.secrets_path, name=str(self.secrets_path), secrets_path=None)
            if not isinstance(secrets, dict):
                raise ConfigError(f"{self.secrets_path}: expected a mapping of name: value")
            self._secrets = secrets
        return self._secrets

    def construct_env(self, node: yaml.Node) -> str:
        var, *default = self._argument(node).split(None, 1)
        value = os.environ.get(var)
        if value is not None:
            return value
        if default:
            return default[0]
        raise self._error(node, f"environment variable {var!r} is not set (a default can follow: "
                                f"!env {var} default)")


LineLoader.add_constructor("tag:yaml.org,2002:map", LineLoader.construct_located_map)
LineLoader.add_constructor("tag:yaml.org,2002:seq", LineLoader.construct_located_seq)
LineLoader.add_constructor("!secret", LineLoader.construct_secret)
LineLoader.add_constructor("!env", LineLoader.construct_env)
LineLoader.add_constructor("!env_var", LineLoader.construct_env)


def _read(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{name}: cannot read the file ({err.strerror or err})") from None


def _yaml_problem(name: str, err: yaml.MarkedYAMLError) -> str:
    mark = err.problem_mark or err.context_mark
    where = f"{name}, line {mark.line + 1}, column {mark.column + 1}" if mark else name
    problem = err.problem or err.context or "invalid YAML"
    if err.problem and err.context and err.context_mark:
        problem += f" ({err.context} started on line {err.context_mark.line + 1})"
    return f"{where}: {problem}"


def _reader_problem(name: str, text: str, err: yaml.reader.ReaderError) -> str:
    line = text.count("\n", 0, err.position) + 1
    column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
    return f"{name}, line {line}, column {column}: {err.reason} (character #x{err.character:04x})"


def _parse(path: Path, *, name: str, secrets_path: Path | None) -> Any:
    text = _read(path, name)
    try:
        loader = LineLoader(text, file=name, secrets_path=secrets_path)  # the pure-Python one reads here
        try:
            return _checked_tree(loader.get_single_data())
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None
    except yaml.MarkedYAMLError as err:
        raise ConfigError(_yaml_problem(name, err)) from None
    except yaml.reader.ReaderError as err:
        raise ConfigError(_reader_problem(name, text, err)) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{name}: {err}") from None


def _checked_tree(root: Any) -> Any:
    """``root``, unless a value contains itself (``&a [*a]``), nests deeper than ``MAX_DEPTH`` or
    expands through aliases to more than ``MAX_VALUES`` values ("billion laughs"): no setting means
    any of these, and every later walk of the tree would recurse without end, past Python's limit or
    for minutes. Each node is walked once, however often it is shared."""
    on_path: set[int] = set()
    size: dict[int, int] = {}  # id -> values it expands to, for the nodes walked
    stack: list[tuple[Any, int]] = [(root, 1)]  # depth < 0: leaving the node
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, (YamlDict, YamlList)):
            continue
        children = list(node.values() if isinstance(node, dict) else node)
        if depth < 0:
            on_path.discard(id(node))
            size[id(node)] = total = 1 + sum(size.get(id(child), 1) for child in children)
            if total > MAX_VALUES:
                raise ConfigError(f"{node.file}, line {node.line}: aliases expand this value to more than "
                                  f"{MAX_VALUES:,} values")
            continue
        if id(node) in on_path:
            raise ConfigError(f"{node.file}, line {node.line}: this value contains itself (a recursive alias)")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{node.file}, line {node.line}: nested deeper than {MAX_DEPTH} levels")
        if id(node) in size:
            continue
        on_path.add(id(node))
        stack.append((node, -1))
        stack.extend((child, depth + 1) for child in children)
    return root


def load_yaml(path: str | Path) -> Any:
    """Parse one YAML file into :class:`YamlDict`/:class:`YamlList`/scalars (None when empty).

    ``!secret`` reads ``secrets.yaml`` beside ``path``. Raises ConfigError with file and line.
    """
    path = Path(path)
    return _parse(path, name=str(path), secrets_path=path.parent / SECRETS_FILE)


def _plain(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of a loaded tree with plain dicts and lists (aliases stay shared)."""
    memo = {} if memo is None else memo
    if not isinstance(value, (dict, list)):
        return value
    if id(value) not in memo:
        if isinstance(value, dict):
            memo[id(value)] = out = {}
            out.update((key, _plain(item, memo)) for key, item in value.items())
        else:
            memo[id(value)] = out = []
            out.extend(_plain(item, memo) for item in value)
    return memo[id(value)]


# --------------------------------------------------------------------------------------------
# Schemas of the host's own sections
# --------------------------------------------------------------------------------------------


def _string(value: Any) -> str:
    """A string; numbers are accepted as their text (a numeric password or user name)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise vol.Invalid("expected a string")
    return str(value)


def _boolean(value: Any) -> bool:
    """true/false, also as text (``!env`` values are strings)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower() if isinstance(value, (str, int)) else None
    if text in ("true", "yes", "on", "1"):
        return True
    if text in ("false", "no", "off", "0"):
        return False
    raise vol.Invalid("expected true or false")


def _topic(value: Any) -> str:
    """An MQTT topic prefix: no wildcards, spaces, or leading/trailing '/'."""
    if not isinstance(value, str) or not re.fullmatch(r"[^/#+\s](?:[^#+\s]*[^/#+\s])?", value):
        raise vol.Invalid("must be an MQTT topic prefix (no +, #, spaces or leading/trailing /)")
    return value


def _log_level(value: Any) -> str:
    if isinstance(value, str) and value.upper() in LOG_LEVELS:
        return value.upper()
    raise vol.Invalid(f"must be one of {', '.join(level.lower() for level in LOG_LEVELS)}")


def _port(minimum: int) -> vol.All:
    return vol.All(integer, vol.Range(min=minimum, max=65535))


_TEXT = vol.All(_string, vol.Length(min=1))

MQTT_SCHEMA = vol.Schema({
    vol.Optional("host", default="localhost", description='broker host'): _TEXT,
    vol.Optional("port", description='broker port (1883, or 8883 with TLS)'): _port(1),
    vol.Optional("username", description='broker user'): _string,
    vol.Optional("password", description='broker password (use !secret)'): _string,
    vol.Optional("tls", default=False, description='TLS to the broker'): _boolean,
    vol.Optional("ca_file", description="CA bundle for the broker's certificate (relative to the config)"): _TEXT,
    vol.Optional("certfile", description='client certificate for TLS client authentication'): _TEXT,
    vol.Optional("keyfile", description="the client certificate's key"): _TEXT,
    vol.Optional("tls_insecure", default=False, description='skip the broker certificate check (never the default)'): _boolean,
    vol.Optional("client_id", default="fleetbridge", description='MQTT client id; also names the bridge device: unique per instance'): _TEXT,
    vol.Optional("base_topic", default="fleetbridge", description='root of every fleetbridge topic (docs/mqtt.md)'): _topic,
    vol.Optional("discovery_prefix", default="homeassistant", description='Home Assistant discovery prefix'): _topic,
    vol.Optional("discovery", default=True, description='publish Home Assistant discovery'): _boolean,
    vol.Optional("discovery_mode", default="device", description='`device` (one message per device, HA 2024.11+) or `entity` (per-entity topics: older HA, openHAB)'): vol.In(("device", "entity")),
    vol.Optional("keepalive", default=60, description='MQTT keepalive, seconds'): vol.All(integer, vol.Range(min=0, max=65535)),
    vol.Optional("heartbeat", default=0, description='seconds between re-publishing unchanged states (0: only on change)'): vol.All(number, vol.Range(min=0)),
    vol.Optional("device_triggers", default=True, description='one Home Assistant device trigger per event type, beside the event entity'): _boolean,
    vol.Optional("qos", default=1, description='QoS of what the bridge publishes (0 or 1)'): vol.All(integer, vol.In((0, 1))),
    vol.Optional("event_ledger", default=True, description="a second connection (`<client_id>-ledger`, persistent session) that reads the bridge's own events back, so that a crash never repeats one"): _boolean,
})

HTTP_SCHEMA = vol.Schema({
    vol.Optional("host", default="127.0.0.1", description='listen address of the status page (loopback by default)'): _TEXT,
    vol.Optional("port", default=8099, description='its port'): _port(0),
    vol.Optional("enabled", default=True, description='serve the status page, /health and /metrics'): _boolean,
})

TOP_SCHEMA = vol.Schema({
    vol.Optional("mqtt", description="the broker; without it fleetbridge starts a private one on 127.0.0.1 "
                 "(mosquitto if installed, else amqtt in-process): the demo"): MQTT_SCHEMA,
    vol.Optional("storage", default="fleetbridge.db", description='SQLite store, relative to the config file'): _TEXT,
    vol.Optional("http", description='status web page (off unless present)'): HTTP_SCHEMA,
    vol.Optional("log_level", description='debug, info, warning or error (--log-level wins)'): _log_level,
    vol.Required("accounts", description='the vendor accounts (below)'): list,
})

_FIRST_PASS = BASE_ACCOUNT_SCHEMA.extend({}, extra=vol.ALLOW_EXTRA)
_TLS_FILES = ("ca_file", "certfile", "keyfile")
_SECTIONS_MAY_BE_EMPTY = ("mqtt", "http")  # `mqtt:` alone means all defaults


# --------------------------------------------------------------------------------------------
# Error reporting
# --------------------------------------------------------------------------------------------

_EXPECTED = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
             "dict": "a mapping", "a dictionary": "a mapping", "list": "a list"}


def _suggest(word: Any, candidates: Sequence[str]) -> str:
    """`` (did you mean 'x'?)`` when a candidate is close, else ``""``."""
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: Any) -> str:
    """A short, YAML-flavoured rendering of a (non-secret) value for a message."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dotted(path: Sequence[Any]) -> str:
    text = ""
    for step in path:
        text += f"[{step}]" if isinstance(step, int) else f".{step}"
    return text.lstrip(".")


def _schema_keys(schema: Any, path: Sequence[Any]) -> list[str]:
    """The keys a (nested) voluptuous schema allows at ``path``, best effort."""
    node = schema
    for step in [*path, None]:
        node = _unwrap(node)
        if isinstance(step, int) and isinstance(node, list) and node:
            node = node[0]
            continue
        if not isinstance(node, dict):
            return []
        keys = {_marker_key(key): value for key, value in node.items()}
        if step is None:
            return [key for key in keys if isinstance(key, str)]
        node = keys.get(step)
    return []


def _unwrap(node: Any) -> Any:
    """The dict inside vol.Schema / vol.All / vol.Any wrappers (or ``node``)."""
    while True:
        if isinstance(node, vol.Schema):
            node = node.schema
        elif isinstance(node, (vol.All, vol.Any)):
            inner = [_unwrap(v) for v in node.validators]
            node = next((v for v in inner if isinstance(v, (dict, list))), None)
        else:
            return node


def _marker_key(key: Any) -> Any:
    return key.schema if isinstance(key, vol.Marker) else key


def _errors(err: vol.Invalid) -> Iterator[vol.Invalid]:
    if isinstance(err, vol.MultipleInvalid):
        for inner in err.errors:
            yield from _errors(inner)
    else:
        yield err


def _secret_strings(value: Any) -> set[str]:
    """Every string (or number, as text) of ``MIN_SECRET_LEN``+ characters inside ``value``."""
    if isinstance(value, dict):
        return set().union(*(_secret_strings(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_secret_strings(v) for v in value))
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return set()
    text = str(value)
    return {text} if len(text) >= MIN_SECRET_LEN else set()


def _tagged_secrets(node: Any) -> set[str]:
    """The values of every ``!secret`` in a loaded tree."""
    found: set[str] = set()
    if isinstance(node, _Located):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            found |= _secret_strings(value) if key in node.secret else _tagged_secrets(value)
    return found


def account_secrets(platform_cls: type[Platform], data: Mapping[str, Any]) -> set[str]:
    """The secret values of one account: its platform's ``SECRET_KEYS`` (4+ characters)."""
    return set().union(*(_secret_strings(data.get(key)) for key in platform_cls.SECRET_KEYS))


def _platform_of(raw: Any, platforms: Mapping[str, type[Platform]]) -> type[Platform] | None:
    name = raw.get("platform") if isinstance(raw, dict) else None
    return platforms.get(name) if isinstance(name, str) else None


def _secret_keys(platform_cls: type[Platform] | None) -> set[str]:
    """Keys redacted in messages: the platform's, and the base ones when it is unknown."""
    return set(Platform.SECRET_KEYS) | set(platform_cls.SECRET_KEYS if platform_cls else ())


class _Report:
    """Collects problems as ``file, line N: where: problem`` lines, never showing a secret."""

    def __init__(self, file: str, root: YamlDict, platforms: Mapping[str, type[Platform]]) -> None:
        self.file, self.root = file, root
        self.problems: set[tuple[int, str]] = set()
        self.secret_paths: set[KeyPath] = {("mqtt", "password")}
        accounts = root.get("accounts")
        for index, raw in enumerate(accounts if isinstance(accounts, list) else ()):
            keys = _secret_keys(_platform_of(raw, platforms))
            self.secret_paths |= {("accounts", index, key) for key in keys}
        self.scrub = _tagged_secrets(root).union(
            *(_secret_strings(self.walk(path)[1]) for path in self.secret_paths))

    def walk(self, path: Sequence[Any]) -> tuple[int, Any, bool]:
        """Follow ``path`` in the file: (line of the deepest node reached, value or None, secret)."""
        node: Any = self.root
        line, secret = self.root.line, False
        for step in path:
            if not _contains(node, step):
                return line, None, secret
            if not secret:  # a !secret's own lines are in secrets.yaml
                line = node.line_of(step)
            secret = secret or step in node.secret
            node = node[step]
        secret = secret or any(tuple(path[:n]) in self.secret_paths for n in range(len(path) + 1))
        return line, node, secret

    def where(self, path: Sequence[Any]) -> str:
        """``accounts[0] (Delivery vans) 'simulator.devices'``, ``mqtt 'port'`` or ``""``."""
        if not path:
            return ""
        head, rest = str(path[0]), list(path[1:])
        if path[0] == "accounts" and rest and isinstance(rest[0], int):
            index = rest.pop(0)
            head = f"accounts[{index}]"
            name = self.walk(["accounts", index, "name"])[1]
            if isinstance(name, str) and name:
                head += f" ({name})"
        return head + (f" '{_dotted(rest)}'" if rest else "")

    def add(self, path: Sequence[Any], problem: str, *, at: Sequence[Any] | None = None) -> None:
        """Record ``problem`` about ``path``, on the line of ``at`` (default: ``path``)."""
        line = self.walk(path if at is None else at)[0]
        where = self.where(path)
        text = f"{self.file}, line {line}: " + (f"{where}: " if where else "") + problem
        for secret in self.scrub:
            text = text.replace(secret, REDACTED)
        self.problems.add((line, text))

    def bad_value(self, path: Sequence[Any], problem: str) -> None:
        """Record a problem with the value at ``path``, showing the value unless secret."""
        _, value, secret = self.walk(path)
        self.add(path, f"{problem}, got {REDACTED if secret else _show(value)}")

    def validate(self, schema: vol.Schema, data: Any, prefix: Sequence[Any]) -> Any:
        """``schema(data)``, or None with every error recorded under ``prefix``."""
        try:
            return schema(data)
        except vol.Invalid as err:
            for error in _errors(err):
                self._invalid(error, schema, list(prefix))
            return None

    def _invalid(self, error: vol.Invalid, schema: vol.Schema, prefix: list[Any]) -> None:
        rel = [_marker_key(step) for step in error.path]
        path = prefix + rel
        if isinstance(error, vol.RequiredFieldInvalid) and rel:
            self.add(path[:-1], f"required key {rel[-1]!r} is missing")
        elif error.msg == "extra keys not allowed" and rel:
            hint = _suggest(rel[-1], _schema_keys(schema, rel[:-1]))
            self.add(path[:-1], f"unknown key {rel[-1]!r}{hint}", at=path)
        else:
            match = re.fullmatch(r"expected (.+)", error.msg)
            problem = f"expected {_EXPECTED[match[1]]}" if match and match[1] in _EXPECTED else error.msg
            self.bad_value(path, problem)

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError("\n".join(text for _, text in sorted(self.problems)))


def _contains(node: Any, step: Any) -> bool:
    if isinstance(node, YamlDict):
        return isinstance(step, Hashable) and step in node
    return isinstance(node, YamlList) and isinstance(step, int) and 0 <= step < len(node)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _resolve(folder: Path, value: str) -> Path:
    """``value`` as a path, relative ones taken from ``folder`` (``:memory:`` kept as is)."""
    if value == ":memory:":
        return Path(value)
    path = Path(value).expanduser()
    return path if path.is_absolute() else folder / path


def _mqtt_config(data: dict[str, Any], report: _Report, folder: Path) -> MqttConfig:
    for key in (*_TLS_FILES, "tls_insecure"):
        if data.get(key) and not data["tls"]:
            report.add(["mqtt", key], "needs 'tls: true' (or remove it)")
    if "keyfile" in data and "certfile" not in data:
        report.add(["mqtt", "keyfile"], "needs 'certfile' as well")
    files = {key: str(_resolve(folder, data[key])) for key in _TLS_FILES if key in data}
    return MqttConfig(**{**data, **files, "port": data.get("port", 8883 if data["tls"] else 1883)})


def _is_dangerous(service: str) -> bool:
    description = SERVICE_BY_NAME.get(service)
    return bool(description and description.dangerous)


def _enabled_services(platform_cls: type[Platform], chosen: Mapping[str, bool]) -> dict[str, bool]:
    """Every service of the platform -> enabled; dangerous ones only when set true."""
    return {name: chosen.get(name, not _is_dangerous(name)) for name in platform_cls.SERVICES}


def _check_services(report: _Report, path: KeyPath, raw: Any, platform_cls: type[Platform]) -> None:
    services = raw.get("services")
    if not isinstance(services, dict):
        return
    offered = platform_cls.SERVICES
    for key in services:
        if key not in offered:
            hint = _suggest(key, offered) or f" (offered: {', '.join(offered) or 'none'})"
            report.add([*path, "services"], f"unknown service {key!r}{hint}", at=[*path, "services", key])


def _unknown_platform(name: Any, platforms: Mapping[str, type[Platform]]) -> str:
    installed = ", ".join(sorted(platforms)) or "none"
    close = difflib.get_close_matches(str(name), list(platforms), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown platform {name!r} ({hint}installed: {installed})"


def _load_account(report: _Report, index: int, raw: Any, platforms: Mapping[str, type[Platform]],
                  unavailable: Mapping[str, str]) -> AccountConfig | None:
    """Validate one account (both passes) or record why it is invalid."""
    path: KeyPath = ("accounts", index)
    if not isinstance(raw, dict):
        report.bad_value(path, "expected a mapping of account settings")
        return None
    plain = _plain(raw)
    base = report.validate(_FIRST_PASS, plain, path)
    platform_cls = _platform_of(raw, platforms)
    name, reason = raw.get("platform"), None
    if platform_cls is not None:
        _check_services(report, path, raw, platform_cls)
        data = report.validate(platform_cls.CONFIG_SCHEMA, plain, path)
    elif isinstance(name, str) and name in unavailable:
        data, reason = base, unavailable[name]
    else:
        if isinstance(name, str):
            report.add([*path, "platform"], _unknown_platform(name, platforms))
        return None
    if base is None or data is None:
        return None
    data["id"] = data.get("id") or slugify(data["name"])
    if platform_cls is not None:
        data["services"] = _enabled_services(platform_cls, data.get("services") or {})
    return AccountConfig(id=data["id"], name=data["name"], platform=data["platform"], data=data,
                         line=report.walk(path)[0], disabled_reason=reason)


def _load_accounts(report: _Report, raw: Any, platforms: Mapping[str, type[Platform]],
                   unavailable: Mapping[str, str]) -> list[AccountConfig]:
    accounts: list[AccountConfig] = []
    first: dict[str, tuple[int, int]] = {}  # id -> (index, line)
    for index, item in enumerate(raw if isinstance(raw, list) else ()):
        account = _load_account(report, index, item, platforms, unavailable)
        if account is None:
            continue
        if account.id in first:
            other, line = first[account.id]
            report.add(["accounts", index, "id"], f"duplicate account id {account.id!r} (also "
                       f"accounts[{other}] on line {line}); give one of them another 'id:'")
            continue
        first[account.id] = (index, account.line or 0)
        accounts.append(account)
    return accounts


def _all_secrets(root: YamlDict, accounts: list[AccountConfig], mqtt: MqttConfig | None,
                 platforms: Mapping[str, type[Platform]]) -> frozenset[str]:
    found = _tagged_secrets(root) | _secret_strings(mqtt.password if mqtt else None)
    for account in accounts:
        found |= account_secrets(platforms.get(account.platform, Platform), account.data)
    return frozenset(found)


def load_config(path: str | Path, platforms: Mapping[str, type[Platform]],
                unavailable: Mapping[str, str] = {}) -> Config:  # noqa: B006 (read only)
    """Load and validate the config file.

    ``platforms``: platform name -> class. ``unavailable``: platform name -> why its plugin did
    not load; such accounts come back with ``disabled_reason`` instead of an error.
    Raises ConfigError listing every problem found.
    """
    path = Path(path)
    name, folder = str(path), path.absolute().parent
    root = load_yaml(path)
    if root is None:
        raise ConfigError(f"{name}: the file is empty (it needs at least 'accounts:')")
    if not isinstance(root, YamlDict):
        raise ConfigError(f"{name}, line 1: expected a mapping of settings, got {_show(root)}")
    report = _Report(name, root, platforms)
    plain = _plain(root)
    for section in _SECTIONS_MAY_BE_EMPTY:
        if section in plain and plain[section] is None:
            plain[section] = {}
    top = report.validate(TOP_SCHEMA, plain, ()) or {}
    accounts = _load_accounts(report, root.get("accounts"), platforms, unavailable)
    mqtt = _mqtt_config(top["mqtt"], report, folder) if "mqtt" in top else None
    report.raise_if_any()
    return Config(
        path=path.absolute(),
        mqtt=mqtt,
        storage=_resolve(folder, top["storage"]),
        http=HttpConfig(**top["http"]) if "http" in top else None,
        log_level=top.get("log_level"),
        accounts=accounts,
        secrets=_all_secrets(root, accounts, mqtt, platforms),
    )
