"""Configuration: one frozen `Config`, from defaults < TOML file < environment < command line.

Owns: reading the settings from those sources (`load`), each setting's environment variable
(`ACS_GATEWAY_<NAME>`), where a value came from (`source_of`), and the readable error that
names a bad one: the setting, where its value came from, the value and the fix. Never: declares
a setting, its default or its check (`gateway.config_settings` does; `Config` and `Route` are
imported from here too, where applications find them); no setting is read anywhere else.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from typing import Any, Final

import cattrs

# `Config` and `Route` are re-exported: applications import them from here (docs/testing.md).
from .config_settings import FILE_ONLY, SETTINGS
from .config_settings import Config as Config
from .config_settings import Route as Route
from .errors import ConfigError

ENV_PREFIX: Final = "ACS_GATEWAY_"


def env_name(setting: str) -> str:
    return ENV_PREFIX + setting.upper()


def _converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def to_bool(value: Any, _: type) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")

    def to_int(value: Any, _: type) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(f"not a whole number: {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"not a whole number: {value!r}") from None

    def to_float(value: Any, _: type) -> float:
        if isinstance(value, bool):
            raise ValueError(f"not a number: {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"not a number: {value!r}") from None

    def to_str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"not a string: {value!r}")
        return value

    conv.register_structure_hook(bool, to_bool)
    conv.register_structure_hook(int, to_int)
    conv.register_structure_hook(float, to_float)
    conv.register_structure_hook(str, to_str)

    def to_strings(value: Any, _: type) -> tuple[str, ...]:
        if isinstance(value, str):  # from the environment: comma-separated
            return tuple(item.strip() for item in value.split(",") if item.strip())
        if not isinstance(value, list | tuple):
            raise ValueError(f"not a list: {value!r}")
        return tuple(to_str(item, str) for item in value)

    conv.register_structure_hook_func(lambda t: t == tuple[str, ...], to_strings)
    return conv


_CONVERTER: Final = _converter()


Sources = dict[str, str]  # setting -> where its value came from, as a reader would look for it


def load(
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Build the configuration; raises ConfigError naming the setting that is wrong, where its
    value came from (file key, environment variable or flag), the value and the fix.
    `overrides`: the command line's values, by setting (None: not given)."""
    values, sources = _gather(path, environ, overrides)
    config = _structure(values, sources)
    _check_files(config, sources)
    return config


def source_of(
    setting: str,
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """Where `load` (with the same arguments) took `setting` from, for an error message."""
    return _gather(path, environ, overrides)[1].get(setting, "default")


def _gather(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], Sources]:
    values: dict[str, Any] = {}
    sources: Sources = {}
    if path is not None:
        where = f"config file {os.fspath(path)!r}"
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
            values.update(tomllib.loads(text))
        except OSError as exc:
            raise ConfigError(f"{where}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            hint = "; did you mean `[processors.NAME]`?" if "[processor." in text else ""
            raise ConfigError(f"{where}: not valid TOML ({exc}){hint}") from None
        for key in sorted(set(values) - set(SETTINGS)):
            raise ConfigError(f"{where}: unknown setting {key!r}{_suggestion(key)}")
        sources.update((name, f"{where}, key {name}") for name in values)
    env = os.environ if environ is None else environ
    for name in SETTINGS:
        if name not in FILE_ONLY and env_name(name) in env:
            values[name] = env[env_name(name)]
            sources[name] = f"environment variable {env_name(name)}"
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            sources[name] = "flag --" + name.replace("_", "-")
    return values, sources


def _suggestion(key: str) -> str:
    """A close known key, for a misspelt one."""
    close = difflib.get_close_matches(key, SETTINGS, n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else " (docs/configuration.md lists them)"


def _check_files(config: Config, sources: Sources) -> None:
    """The TLS files must be readable now: not at the first connection, nor only in a worker."""
    for name in ("tls_certfile", "tls_keyfile"):
        path = getattr(config, name)
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(
                f"{name} ({sources.get(name, 'default')}) = {path!r}: {exc.strerror}; "
                "give the path of a readable PEM file"
            ) from None


def _describe(exc: BaseException, sources: Sources, values: Mapping[str, Any]) -> str:
    """One failed setting as "name (source) = value: what is wrong"."""
    notes = [
        n for n in getattr(exc, "__notes__", ()) if isinstance(n, cattrs.AttributeValidationNote)
    ]
    reason = str(exc)
    if notes:
        name = notes[-1].name
        reason = reason.split(": ")[0]  # the converter's "not a whole number: 'abc'"
    else:  # a validator: its message starts with the setting's name
        name = max((n for n in SETTINGS if reason.startswith(n)), key=len, default="")
        if reason.startswith((f"{name}: ", f"{name} must ")):
            reason = reason[len(name) :].removeprefix(":").strip()
    if name not in values:
        return reason
    if isinstance(exc, cattrs.ClassValidationError | cattrs.IterableValidationError):
        nested = cattrs.transform_error(exc, path=name, format_exception=_nested_reason)
        reason = "; ".join(nested)  # a table in a list of tables: which one, and what is wrong
    if name == "processor" and isinstance(values[name], dict):
        reason += f"; did you mean `[processors.{next(iter(values[name]), 'NAME')}]`?"
    return f"{name} ({sources.get(name, 'default')}) = {values[name]!r}: {reason}"


def _nested_reason(exc: BaseException, type_: type | None) -> str:
    if type_ is None and isinstance(exc, ValueError):  # a validator: its message names it
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _structure(values: dict[str, Any], sources: Sources | None = None) -> Config:
    try:
        return _CONVERTER.structure(values, Config)
    except cattrs.ClassValidationError as exc:
        messages = [_describe(e, sources or {}, values) for e in exc.exceptions]
        raise ConfigError("invalid configuration: " + "; ".join(messages)) from None
    except (ValueError, TypeError) as exc:  # validators and __attrs_post_init__
        raise ConfigError(
            f"invalid configuration: {_describe(exc, sources or {}, values)}"
        ) from None
