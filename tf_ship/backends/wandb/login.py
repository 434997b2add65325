"""Whether wandb can log in without asking, and a ``wandb.init`` that never asks.

The backend looks for credentials where wandb does and fails at once without any; while
``wandb.init`` runs, standard input is not a terminal to wandb, so that a source missed here
makes wandb raise instead of prompting. Where wandb looks: docs/backends.md (wandb). Keys are
never read into tf-ship's state or printed: only whether one exists matters here.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

OFFLINE_MODES = frozenset({"offline", "dryrun", "disabled"})
"""wandb modes that never log in."""


def no_credentials_message(base_url: str) -> str:
    """The one-line error for an online run without credentials: the two ways out."""
    return (
        f"wandb has no API key for {base_url}: run `wandb login` (or set WANDB_API_KEY), "
        "or ship with --wandb-mode offline and upload later with `wandb sync`"
    )


def wandb_settings(wandb: Any) -> Any:  # noqa: ANN401 - the wandb module and its Settings
    """The settings ``wandb.init`` starts from, read without starting wandb's service.

    ``wandb.setup()`` also starts wandb-core, a second or so that a run without credentials
    need not wait for; wandb's own ``_setup(start_service=False)`` (0.19.10 to 0.31) does not.
    """
    try:
        setup: Any = importlib.import_module("wandb.sdk.wandb_setup")
        return setup._setup(start_service=False).settings  # noqa: SLF001
    except (ImportError, AttributeError, TypeError):
        return wandb.setup().settings


def effective_mode(wandb: Any, mode: str | None) -> str:  # noqa: ANN401 - the wandb module
    """The mode ``wandb.init(mode=mode)`` will use: `mode`, else wandb's own settings.

    wandb's settings hold ``$WANDB_MODE`` and what ``wandb offline`` wrote to its settings
    file; without either a run is online.
    """
    if mode:
        return mode
    return str(getattr(wandb_settings(wandb), "mode", None) or "online")


def base_url(wandb: Any) -> str:  # noqa: ANN401 - the wandb module
    """The server wandb logs in to (``$WANDB_BASE_URL``, its settings, else its default)."""
    return str(wandb_settings(wandb).base_url)


def credentials_found(wandb: Any) -> bool:  # noqa: ANN401 - the wandb module
    """True when wandb will find credentials for its base URL without prompting."""
    settings = wandb_settings(wandb)
    url = str(settings.base_url)
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    if getattr(settings, "api_key", None) or getattr(settings, "identity_token_file", None):
        return True
    return _session_credentials(url) or _netrc_key(wandb, url)


def _session_credentials(url: str) -> bool:
    """True when a ``wandb.login()`` of this process left credentials (wandb 0.24 on)."""
    try:
        wbauth: Any = importlib.import_module("wandb.sdk.lib.wbauth")
        return wbauth.session_credentials(host=url) is not None
    except (ImportError, AttributeError, TypeError, ValueError):
        return False


def _netrc_key(wandb: Any, url: str) -> bool:  # noqa: ANN401 - the wandb module
    """True when the netrc file has a key for the URL, read with wandb's own reader.

    wandb 0.24 on reads it in ``wbauth``, 0.23 in ``auth``, earlier versions with requests'
    ``get_netrc_auth`` (as here). A key wandb would refuse still counts: ``wandb.init`` then
    says what is wrong with it.
    """
    for name in ("wandb.sdk.lib.wbauth", "wandb.sdk.lib.auth"):
        try:
            reader = importlib.import_module(name).read_netrc_auth
        except (ImportError, AttributeError):
            continue
        try:
            return bool(reader(host=url))
        except wandb.errors.AuthenticationError:
            return True
        except (OSError, ValueError):
            return False
    try:
        from requests.utils import get_netrc_auth  # noqa: PLC0415 - a dependency of wandb
    except ImportError:
        return False
    try:
        auth = get_netrc_auth(url)
    except (OSError, ValueError):
        return False
    return bool(auth and auth[-1])


_stdin_lock = threading.Lock()
_stdin_users = 0
_stdin_saved: Any = None
_stdin_empty: Any = None


@contextlib.contextmanager
def stdin_not_a_terminal() -> Iterator[None]:
    """While inside, ``sys.stdin`` is an empty stream that is no terminal.

    Only the Python object is replaced (file descriptor 0 is untouched, so child processes and
    the terminal are unaffected); tf-ship itself never reads standard input. Several threads
    may be inside at once: the last one out puts the original back.
    """
    global _stdin_users, _stdin_saved, _stdin_empty  # noqa: PLW0603 - one sys.stdin per process
    with _stdin_lock:
        if _stdin_users == 0:
            _stdin_saved = sys.stdin
            _stdin_empty = sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: PTH123, SIM115
        _stdin_users += 1
    try:
        yield
    finally:
        with _stdin_lock:
            _stdin_users -= 1
            if _stdin_users == 0:
                if sys.stdin is _stdin_empty:
                    sys.stdin = _stdin_saved
                _stdin_empty.close()
                _stdin_saved = _stdin_empty = None


__all__ = [
    "OFFLINE_MODES",
    "base_url",
    "credentials_found",
    "effective_mode",
    "no_credentials_message",
    "stdin_not_a_terminal",
    "wandb_settings",
]
