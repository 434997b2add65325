"""Why a backend call failed, in a few words, and whether retrying can fix it.

A tracker SDK's exception text runs to hundreds of characters (MLflow's repeats the URI, the
request, urllib3's pool and the socket error). A person watching a retry loop needs the cause
("connection refused", "timed out", "HTTP 503"); the whole text is for ``-v``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

from tf_ship.redaction import redact

MAX_REASON = 80
HTTP_ERROR = 400
"""Longest reason shown when no short one is recognised."""

UNFIXABLE: tuple[type[BaseException], ...] = (
    ImportError,  # a missing or broken package (ModuleNotFoundError included)
    EOFError,  # input() with standard input closed: an SDK prompting for what cannot come
    SyntaxError,
    NameError,
    AttributeError,
    TypeError,
    NotImplementedError,
)
"""Exceptions that another attempt cannot fix: the code or the installation is wrong."""

_SOCKET_TEXTS = (
    ("connection refused", "connection refused"),
    ("connection reset", "connection reset"),
    ("connection aborted", "connection reset"),
    ("remote end closed connection", "connection closed by the server"),
    ("timed out", "timed out"),
    ("timeout", "timed out"),
    ("name or service not known", "host not found"),
    ("nodename nor servname", "host not found"),
    ("temporary failure in name resolution", "host not found"),
    ("failed to resolve", "host not found"),
    ("getaddrinfo failed", "host not found"),
    ("network is unreachable", "network unreachable"),
    ("no route to host", "no route to host"),
    ("certificate verify failed", "TLS certificate not trusted"),
    ("sslerror", "TLS error"),
    ("[ssl", "TLS error"),
)
_HTTP_STATUS = re.compile(
    r"(?:error code|status(?: code)?|HTTP(?: error)?|too many)\s*:?\s*(?P<code>[1-5]\d\d)\b",
    re.IGNORECASE,
)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, its causes and contexts, and the errors urllib3 keeps in ``reason``."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None))
        todo.extend(link for link in linked if isinstance(link, BaseException))


def _status_code(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    code = getattr(response, "status_code", None) or getattr(error, "status_code", None)
    return code if isinstance(code, int) else None


def _typed_reason(error: BaseException) -> str | None:
    """The reason an exception's type (or HTTP status) tells, if any."""
    if str(error).startswith("no answer after"):  # the engine's own call timeout
        return str(error)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "host not found"
    if isinstance(error, TimeoutError):
        return "timed out"
    code = _status_code(error)
    return f"HTTP {code}" if code is not None and code >= HTTP_ERROR else None


def _text_reason(text: str) -> str | None:
    """The reason an error's text tells, if any (an HTTP status first: it is the most exact)."""
    match = _HTTP_STATUS.search(text)
    if match and int(match["code"]) >= HTTP_ERROR:
        return f"HTTP {match['code']}"
    lowered = text.lower()
    for needle, reason in _SOCKET_TEXTS:
        if needle in lowered:
            return reason
    return None


def short_reason(error: BaseException) -> str:
    """A few words on why `error` happened: ``connection refused``, ``HTTP 503``, ..."""
    chain = list(_chain(error))
    for link in chain:
        reason = _typed_reason(link)
        if reason is not None:
            return reason
    text = " ".join(str(link) for link in chain)
    return _text_reason(text) or one_line(error)


def one_line(error: BaseException, limit: int = MAX_REASON) -> str:
    """``Type: first line of the message``, redacted and cut to `limit` characters."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = f"{type(error).__name__}: {message}" if message else type(error).__name__
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def full_text(error: BaseException) -> str:
    """``Type: the whole message``, redacted: what ``-v`` shows."""
    return redact(f"{type(error).__name__}: {error}")


def unfixable(error: BaseException) -> bool:
    """Whether retrying cannot help: a broken installation or code, or an interrupt."""
    return isinstance(error, UNFIXABLE) or not isinstance(error, Exception)
