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

tf-ship's log handler, the final summary, the status line and the state file go through it.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

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
    with _lock:
        _known.update(found)


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with every credential tf-ship can recognise replaced by ``***``."""
    global _from_environment  # noqa: PLW0603 - read once: the variables do not change
    if environ is not None:
        secrets = _variable_secrets(environ)
    else:
        if _from_environment is None:
            _from_environment = frozenset(_variable_secrets(os.environ))
        secrets = set(_from_environment)
    with _lock:
        secrets |= _known
    for secret in sorted(secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    text = _USERINFO.sub(_userinfo, text)
    text = _QUERY.sub(lambda m: m["key"] + MASK, text)
    return _AUTHORIZATION.sub(lambda m: f"{m['kind']} {MASK}", text)


def redact_json(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    """A JSON-like value with every string in it redacted (keys are left as they are)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: redact_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_json(item) for item in value]
    return value


class RedactingFormatter(logging.Formatter):
    """A formatter whose output (message, arguments and traceback alike) is redacted."""

    def format(self, record: logging.LogRecord) -> str:
        """Format as usual, then mask credentials."""
        return redact(super().format(record))
