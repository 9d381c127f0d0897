"""Shared pieces of the command parsers: env-backed options, value types, the config.

Every option reads a ``SHARDFLOW_*`` environment variable named after its flag
(``--lease-seconds`` -> ``SHARDFLOW_LEASE_SECONDS``); the command line wins. The
variable's text is converted and checked exactly like the flag's, and a bad value names
the variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from shardflow.config import ClusterConfig, load
from shardflow.errors import ConfigError

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Converter: TypeAlias = Callable[[str], Any]

ENV_PREFIX = "SHARDFLOW_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class CliError(Exception):
    """A mistake in how the command was called; reported in one line, exit status 2."""


def env_name(flag: str) -> str:
    """``--lease-seconds`` -> ``SHARDFLOW_LEASE_SECONDS``."""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def add_option(
    parser: argparse.ArgumentParser,
    *flags: str,
    help: str,
    type: Converter | None = None,
    default: Any = None,
    choices: Sequence[str] | None = None,
    flag: bool = False,
    suppress: bool = False,
    **kwargs: Any,
) -> None:
    """Add an option whose default comes from ``SHARDFLOW_<FLAG>`` when that is set.

    ``flag`` makes a switch (``--json``); its variable takes 1/0, true/false, yes/no.
    ``choices`` are checked by the converter, so a value from the environment is checked
    too (argparse checks choices only on the command line). With ``suppress`` the option
    sets nothing unless given: a command's copy of a global option must not hide a value
    given before the command.
    """
    variable = env_name(next(f for f in flags if f.startswith("--")))
    from_env = os.environ.get(variable)
    text = f"{help} [env: {variable}]"
    if flag:
        value = _env_switch(variable, from_env) if from_env is not None else False
        parser.add_argument(
            *flags,
            action="store_true",
            default=argparse.SUPPRESS if suppress else value,
            help=text,
            **kwargs,
        )
        return
    convert = type or str
    if choices is not None:
        convert = _one_of(choices, convert)
        kwargs.setdefault("metavar", "{" + ",".join(choices) + "}")
    if from_env is not None and from_env != "":
        # argparse converts a string default with ``type`` after parsing, but only when the
        # command line did not set the option, so the variable is checked only when used.
        default = from_env
        convert = _naming_variable(convert, variable, from_env)
    if suppress:
        default = argparse.SUPPRESS
    parser.add_argument(*flags, type=convert, default=default, help=text, **kwargs)


def _env_switch(variable: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise CliError(f"{variable}={text!r}: expected 1/0, true/false, yes/no or on/off")


def _one_of(choices: Sequence[str], convert: Converter) -> Converter:
    def check(text: str) -> Any:
        value = convert(text)
        if value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r} (choose from {', '.join(choices)})"
            )
        return value

    return check


def _naming_variable(convert: Converter, variable: str, env_text: str) -> Converter:
    def checked(text: str) -> Any:
        try:
            return convert(text)
        except (argparse.ArgumentTypeError, ValueError) as exc:
            if text != env_text:
                raise
            raise argparse.ArgumentTypeError(f"{exc} (from {variable})") from exc

    return checked


# -- value types ------------------------------------------------------------------------


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def name_list(text: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]``; refuses empty names."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def upper(text: str) -> str:
    return text.strip().upper()


# -- parsers ----------------------------------------------------------------------------


def add_global_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``--config``, ``--log-level`` and ``--log-format``, on the main parser and
    (``suppress``) on commands."""
    add_option(
        parser,
        "--config",
        "-c",
        metavar="FILE",
        help="cluster YAML file",
        suppress=suppress,
    )
    add_option(
        parser,
        "--log-level",
        help="log to stderr at this level and above (default WARNING; DEBUG adds the driver's"
        " connection retries and tracebacks of errors)",
        type=upper,
        choices=LOG_LEVELS,
        default="WARNING",
        suppress=suppress,
    )
    add_option(
        parser,
        "--log-format",
        help="text, or json: one object per line with workflow_id, shard and attempt",
        type=str.lower,
        choices=LOG_FORMATS,
        default="text",
        suppress=suppress,
    )


def add_command(
    subparsers: Subparsers, name: str, *, help: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A command parser that also takes the global options after the command name."""
    parent = argparse.ArgumentParser(add_help=False)
    add_global_options(parent, suppress=True)
    return subparsers.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[parent],
    )


def add_json_option(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--json", flag=True, help="print JSON instead of a table")


# -- the cluster configuration ----------------------------------------------------------


def config_path(args: argparse.Namespace) -> str:
    path: str | None = getattr(args, "config", None)
    if not path:
        raise CliError(
            "this command needs the cluster config: pass --config FILE or set SHARDFLOW_CONFIG"
        )
    return path


def load_config(args: argparse.Namespace) -> ClusterConfig:
    """The validated config named by ``--config``; remembered on ``args`` for the error
    report, which uses it to keep the DSNs' passwords out of messages."""
    path = config_path(args)
    try:
        config = load(path)
    except ConfigError as exc:
        if exc.line is None and not exc.path:
            raise  # the message names the file already
        raise ConfigError(f"{path}: {exc}") from exc
    args.cluster_config = config
    return config


def port_in_use(flag: str, host: str, port: int, exc: OSError) -> CliError:
    """A port that cannot be bound (in use, not allowed) is a mistake in how the command
    was called, said in one line before any work starts."""
    reason = exc.strerror or str(exc)
    return CliError(
        f"{flag} {port}: cannot listen on {host}:{port}: {reason.lower()}"
        " (pick another port, or 0 for any free one)"
    )
