"""Credentials never reach a terminal, a job log or a file tf-ship writes.

A tracking URI with basic auth (``http://alice:PASSWORD@host``) is how many sites reach a shared
MLflow server, and a tracker SDK's error text often repeats the URI it failed to reach; job logs
on clusters are readable by the whole project. `redact` replaces, in any text:

- the user info of a URI (``scheme://user:secret@`` becomes ``scheme://user:***@``, and
  ``scheme://token@`` becomes ``scheme://***@``);
- the values of query parameters that carry credentials (``?token=``, ``&api_key=``, ...);
- ``Authorization`` header values (``Bearer ...``, ``Basic ...``);
- the values of environment variables that hold credentials (`SECRET_VARIABLES`, and any
  variable whose name says it is a password, token, secret or key), and every secret met so far
  in a URI (`remember_secrets_in`), wherever they appear.

tf-ship's log handler, the final summary, the status line and the state file go through it,
and so does whatever a tracker SDK prints itself (MLflow prints a run's address, basic auth
included, when the run ends): the commands wrap standard output and error in a
`RedactingStream` (`protect_standard_streams`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any, TextIO, cast

MASK = "***"
SECRET_VARIABLES = frozenset(
    {
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "WANDB_API_KEY",
        "DATABRICKS_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AZURE_STORAGE_ACCESS_KEY",
        "AZURE_STORAGE_CONNECTION_STRING",
        "HF_TOKEN",
    }
)
"""Variables whose values are credentials, whatever their length."""
_SECRET_NAME = re.compile(
    r"(PASSWORD|PASSWD|TOKEN|SECRET|API_?KEY|ACCESS_KEY|PRIVATE_KEY)", re.IGNORECASE
)
_NOT_SECRETS = frozenset({"", "0", "1", "true", "false", "yes", "no", "none", "null"})
_MIN_LENGTH = 4
"""Shorter values of variables matched by name only are left alone (they would mask too much)."""

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^\s/?#@'\"<>]+)@")
_QUERY = re.compile(
    r"(?P<key>[?&;][\w.-]*(?:token|key|password|passwd|pwd|secret|signature|sig|auth|"
    r"credential)[\w.-]*=)(?P<value>[^&#\s'\"<>]+)",
    re.IGNORECASE,
)
_AUTHORIZATION = re.compile(r"\b(?P<kind>Bearer|Basic|Token)\s+(?P<value>[A-Za-z0-9._~+/=-]{8,})")

_known: set[str] = set()
_from_environment: frozenset[str] | None = None
_longest_first: tuple[str, ...] | None = None
"""Every secret to mask (the environment's and the remembered ones), longest first."""
_lock = threading.Lock()


def _userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match["info"].partition(":")
    return f"{match['scheme']}{user}:{MASK}@" if colon else f"{match['scheme']}{MASK}@"


def _variable_secrets(environ: Mapping[str, str]) -> set[str]:
    found = set()
    for name, value in environ.items():
        if value.strip().lower() in _NOT_SECRETS:
            continue
        if name in SECRET_VARIABLES or (_SECRET_NAME.search(name) and len(value) >= _MIN_LENGTH):
            found.add(value)
    return found


def secrets_in(text: str) -> set[str]:
    """The passwords and tokens in the user info of the URIs in `text` (plain and decoded)."""
    found = set()
    for match in _USERINFO.finditer(text):
        user, colon, password = match["info"].partition(":")
        secret = password if colon else user
        if secret and secret != MASK:
            found.update({secret, urllib.parse.unquote(secret)})
    for match in _QUERY.finditer(text):
        found.update({match["value"], urllib.parse.unquote(match["value"])})
    return {secret for secret in found if secret and secret != MASK}


def remember_secrets_in(values: Iterable[Any]) -> None:
    """Mask, from now on, the credentials found in these values (option values, URIs)."""
    found: set[str] = set()
    for value in values:
        if isinstance(value, str):
            found |= secrets_in(value)
        elif isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
            found |= {s for item in value if isinstance(item, str) for s in secrets_in(item)}
    global _longest_first  # noqa: PLW0603 - recomputed when the secrets change
    with _lock:
        _known.update(found)
        _longest_first = None


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every credential tf-ship can recognise replaced by ``***``.

    `environ` replaces the process's environment (which is read once) as the source of secret
    variables. Cheap for text without credentials: each pattern runs only when its mark
    (``@``, ``=``, an authorization scheme) is in the text.
    """
    for secret in _secrets(environ):
        if secret in text:
            text = text.replace(secret, MASK)
    if "@" in text:
        text = _USERINFO.sub(_userinfo, text)
    if "=" in text:
        text = _QUERY.sub(lambda m: m["key"] + MASK, text)
    if "Bearer" in text or "Basic" in text or "Token" in text:
        text = _AUTHORIZATION.sub(lambda m: f"{m['kind']} {MASK}", text)
    return text


def _secrets(environ: Mapping[str, str] | None) -> tuple[str, ...]:
    global _from_environment, _longest_first  # noqa: PLW0603 - computed once, when needed
    with _lock:
        if environ is not None:
            return tuple(sorted(_variable_secrets(environ) | _known, key=len, reverse=True))
        if _longest_first is None:
            if _from_environment is None:
                _from_environment = frozenset(_variable_secrets(os.environ))
            _longest_first = tuple(sorted(_from_environment | _known, key=len, reverse=True))
        return _longest_first


def redact_json(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    """A JSON-like value with every string in it redacted (keys are left as they are)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: redact_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(item) for item in value]
    return value


class RedactingStream:
    """A text stream that masks credentials in everything written to it; the rest delegates."""

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream

    def write(self, text: str) -> int:
        """Write `text`, redacted; report it written whole."""
        self.wrapped.write(redact(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        """Write each line, redacted."""
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:  # noqa: ANN401 - whatever the stream has
        return getattr(self.wrapped, name)


def protect_standard_streams() -> None:
    """Redact whatever is written to standard output and error from now on (once)."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, RedactingStream):
            setattr(sys, name, cast("TextIO", RedactingStream(stream)))


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback alike) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Format as usual, then mask credentials."""
        return redact(super().format(record))
