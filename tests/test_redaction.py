"""Credentials stay secret: in messages, the summary, status lines and every file tf-ship writes.

The end-to-end tests plant a secret (basic auth in the tracking URI, secret environment
variables), run the real command under a terminal with ``-v`` (the SDK's whole error texts),
and search everything tf-ship printed and every file below the test's folder for it.
"""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest
from mlflow_server import free_port
from support import clean_env, wait_for
from terminal import Terminal

from tf_ship.redaction import (
    MASK,
    RedactingFormatter,
    RedactingStream,
    redact,
    redact_json,
    remember_secrets_in,
    secrets_in,
)

NO_SECRETS: dict[str, str] = {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "API request to http://alice:s3cretPW@host:5000/api/2.0 failed",
            "API request to http://alice:***@host:5000/api/2.0 failed",
        ),
        ("https://ghp_TOKEN123@example.org/x", "https://***@example.org/x"),
        ("GET /api?run=1&access_token=abc.def&x=2", "GET /api?run=1&access_token=***&x=2"),
        ("?api_key=K3Y&password=pw", "?api_key=***&password=***"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9", "Authorization: Bearer ***"),
        ("http://127.0.0.1:5000 (run 0123abcd)", "http://127.0.0.1:5000 (run 0123abcd)"),
        ("alice@example.org wrote to sqlite:///mlflow.db", None),
        ("connection refused, for 8 s (--retry-timeout 8)", None),
    ],
)
def test_redact_masks_credentials_and_nothing_else(text: str, expected: str | None) -> None:
    """User info, secret query parameters and Authorization values go; the rest stays."""
    assert redact(text, NO_SECRETS) == (text if expected is None else expected)


def test_values_of_secret_variables_are_masked_wherever_they_appear() -> None:
    """WANDB_API_KEY's value, and any *_TOKEN / *_PASSWORD value, is masked in any text."""
    environ = {
        "WANDB_API_KEY": "0123456789abcdef",
        "MLFLOW_TRACKING_PASSWORD": "hunter22",
        "SOME_SERVICE_TOKEN": "tok-42-xyz",
        "RETRY_TOKEN_COUNT": "1",  # too short and not a credential: left alone
        "HOME": "/home/alice",
    }
    text = "key 0123456789abcdef, pw hunter22, token tok-42-xyz, 1 retry, in /home/alice"
    assert redact(text, environ) == f"key {MASK}, pw {MASK}, token {MASK}, 1 retry, in /home/alice"


def test_a_password_met_in_a_uri_is_masked_alone_too() -> None:
    """Once remembered from an option value, the password is masked where it appears alone."""
    assert secrets_in("http://bob:pa%40ss@host") == {"pa%40ss", "pa@ss"}
    remember_secrets_in(["http://bob:Zq8-remembered@host:1", ("x", 3)])
    assert redact("basic auth with Zq8-remembered refused", NO_SECRETS) == (
        f"basic auth with {MASK} refused"
    )


def test_redact_json_masks_every_string_value() -> None:
    """State-file values are redacted, keys and numbers kept."""
    state = {"tracking_uri": "http://alice:pw1234@h:1", "n": 3, "runs": ["https://t0k@h"]}
    assert redact_json(state) == {
        "tracking_uri": "http://alice:***@h:1",
        "n": 3,
        "runs": ["https://***@h"],
    }


def test_the_log_formatter_masks_arguments_and_tracebacks() -> None:
    """Whatever a record holds (message arguments, the exception's text) is masked."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(message)s"))
    log = logging.getLogger("tf_ship.test_redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ConnectionError("http://alice:Tb-in-traceback@h refused")  # noqa: TRY301
        except ConnectionError:
            log.exception("could not reach %s", "http://alice:Arg-secret@h")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "Arg-secret" not in text
    assert "Tb-in-traceback" not in text
    assert "could not reach http://alice:***@h\n" in text
    assert "ConnectionError: http://alice:***@h refused" in text


def test_a_redacting_stream_masks_what_an_sdk_prints_itself() -> None:
    """What is written to a protected standard stream is masked; the rest of it delegates."""
    target = io.StringIO()
    stream = RedactingStream(target)
    text = "View run at: http://alice:Printed-pw@h:1/#/runs/1\n"
    assert stream.write(text) == len(text)
    stream.writelines(["ok\n"])
    stream.flush()
    assert target.getvalue() == "View run at: http://alice:***@h:1/#/runs/1\nok\n"
    assert stream.isatty() is False


# -- end to end: nothing tf-ship prints or writes holds a planted secret ----------------------

PLANTED = {
    "uri": "PlantedUriPw-7f3a",
    "MLFLOW_TRACKING_PASSWORD": "PlantedEnvPw-1c9e",
    "MLFLOW_TRACKING_TOKEN": "PlantedToken-55d0",
    "WANDB_API_KEY": "PlantedWandbKey-0b7e42",
}


def write_log(logdir: Path, steps: range) -> None:
    """Append a metric line per step."""
    logdir.mkdir(parents=True, exist_ok=True)
    with (logdir / "torchfort.log").open("ab") as out:
        for step in steps:
            out.write(f"TORCHFORT::WANDB: model: mymodel, step: {step}, loss: {step}\n".encode())


def ship_with_planted_secrets(tmp_path: Path, uri: str, *extra: str) -> tuple[int, str]:
    """tf-ship -v to MLflow at `uri` (with basic auth) and jsonl, under a terminal."""
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    planted_uri = uri.replace("http://", f"http://alice:{PLANTED['uri']}@")
    args = [sys.executable, "-m", "tf_ship", "--logdir", str(tmp_path / "run1"), "-v"]
    args += ["--no-follow", "-b", "mlflow", "--mlflow-tracking-uri", planted_uri]
    args += ["--mlflow-experiment", "secrets", "-b", "jsonl"]
    args += ["--jsonl-path", str(work / "out.jsonl"), *extra]
    env = clean_env(**{k: v for k, v in PLANTED.items() if k != "uri"})
    terminal = Terminal(args, cwd=work, env=env)
    try:
        code = terminal.wait(180)
    finally:
        terminal.close()
    return code, terminal.raw()


def assert_no_secret_anywhere(tmp_path: Path, output: str) -> None:
    """No planted secret in `output` nor in any file below `tmp_path`."""
    for name, secret in PLANTED.items():
        assert secret not in output, (name, output)
        for path in tmp_path.rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), (name, path)


def test_an_unreachable_server_with_basic_auth_never_shows_the_password(tmp_path: Path) -> None:
    """Every retry line (short and -v's whole text), the summary and the state hide it."""
    write_log(tmp_path / "run1", range(20))
    uri = f"http://127.0.0.1:{free_port()}"
    code, output = ship_with_planted_secrets(tmp_path, uri, "--retry-timeout", "3")
    assert code == 1, output
    assert "could not open the run (connection refused)" in output, output
    assert "MlflowException: API request to http://alice:***@127.0.0.1" in output, output
    assert_no_secret_anywhere(tmp_path, output)
    state = (tmp_path / "run1" / ".tf-ship-state.json").read_text(encoding="utf-8")
    assert "jsonl" in state


def test_a_real_server_reached_with_basic_auth_never_sees_it_printed(
    tmp_path: Path, mlflow_server: str
) -> None:
    """Shipping to a real server with basic auth in the URI: nothing shows the password.

    The view hint shows the URI masked; the state file keeps it masked, and a second run
    resumes the same MLflow run all the same.
    """
    from mlflow import MlflowClient  # noqa: PLC0415 - only this test needs it

    write_log(tmp_path / "run1", range(20))
    code, output = ship_with_planted_secrets(tmp_path, mlflow_server)
    assert code == 0, output
    host = mlflow_server.removeprefix("http://")
    assert f"look at it: http://alice:***@{host} (run " in output, output
    state = (tmp_path / "run1" / ".tf-ship-state.json").read_text(encoding="utf-8")
    assert f"http://alice:***@{host}" in state
    write_log(tmp_path / "run1", range(20, 30))
    code, again = ship_with_planted_secrets(tmp_path, mlflow_server)
    assert code == 0, again
    assert "backend mlflow: FINISHED, 10 events" in again, again
    assert_no_secret_anywhere(tmp_path, output + again)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("secrets")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run1"
    wait_for(lambda: len(client.get_metric_history(run.info.run_id, "mymodel/loss")) == 30)
