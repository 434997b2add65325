"""The progress bar, the status line and the structured status."""

from __future__ import annotations

import io
import logging

import pytest

from tf_ship.shipper.progress import (
    BackendProgress,
    ProgressReporter,
    Snapshot,
    progress_bar,
    status_line,
    structured_line,
)


def snap(elapsed: float, offsets: tuple[int, int], lines: tuple[int, int]) -> Snapshot:
    """Two backends at the given positions in a 1000-byte log."""
    return Snapshot(
        elapsed=elapsed,
        size=1000,
        lines_read=max(lines),
        backends=[
            BackendProgress(
                "mlflow", offsets[0], lines[0], lines[0], 2, failed=False, lag_seconds=1.5
            ),
            BackendProgress(
                "wandb", offsets[1], lines[1], lines[1], 0, failed=False, lag_seconds=0.0
            ),
        ],
    )


def test_progress_bar_follows_the_slowest_backend() -> None:
    """Half the bytes shipped by the slowest backend fill half the bar; time left from rate."""
    text = progress_bar(snap(2.0, (500, 900), (50, 90)))
    assert text.startswith("[" + "#" * 12 + "." * 12 + "]")
    assert "500 B/1000 B" in text
    assert "45 lines/s" in text
    assert "0:02 left" in text


def test_status_line_shows_lag_and_retries() -> None:
    """A lagging backend says how many lines and seconds behind it is; others are caught up."""
    previous = snap(5.0, (100, 100), (10, 10))
    text = status_line(snap(10.0, (400, 900), (40, 90)), previous)
    assert text == "16 lines/s | mlflow: 50 lines behind (1.5 s), 2 retries | wandb: caught up"


def test_structured_line_has_every_backend() -> None:
    """The key=value status carries each backend's counters."""
    text = structured_line(snap(3.0, (400, 900), (40, 90)))
    assert "mlflow.events=40" in text
    assert "wandb.retries=0" in text
    assert "mlflow.failed=false" in text


def test_reporter_draws_in_place_on_a_terminal() -> None:
    """On a terminal the line is redrawn with a carriage return and cleared at the end."""
    now = [0.0]
    stream = io.StringIO()
    reporter = ProgressReporter(stream, follow=False, interactive=True, clock=lambda: now[0])
    reporter.update(snap(1.0, (100, 100), (10, 10)))
    now[0] = 0.1
    reporter.update(snap(1.1, (200, 200), (20, 20)))  # too soon: not drawn
    now[0] = 0.5
    reporter.update(snap(1.5, (300, 300), (30, 30)))
    reporter.close()
    drawn = stream.getvalue().split("\r\x1b[2K")
    assert len([d for d in drawn if d]) == 2
    assert stream.getvalue().endswith("\r\x1b[2K")


def test_reporter_logs_structured_lines_when_not_a_terminal(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without a terminal the status is a log record every interval, never a carriage return."""
    now = [0.0]
    stream = io.StringIO()
    reporter = ProgressReporter(
        stream, follow=True, interactive=False, interval=5.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="tf_ship"):
        for tick in range(12):
            now[0] = float(tick)
            reporter.update(snap(float(tick), (100 + tick, 100), (10 + tick, 10)))
    assert stream.getvalue() == ""
    assert [r.message.startswith("status ") for r in caplog.records] == [True, True]


def test_an_unchanged_status_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    """Without a terminal, a status that did not move is repeated only every quiet_interval.

    A tracker that is down for ten minutes must not fill a job log with identical lines.
    """
    now = [0.0]
    reporter = ProgressReporter(
        io.StringIO(), follow=True, interactive=False, interval=5.0, clock=lambda: now[0]
    )
    with caplog.at_level(logging.INFO, logger="tf_ship"):
        for tick in range(131):
            now[0] = float(tick)
            reporter.update(snap(float(tick), (100, 100), (10, 10)))
    assert len(caplog.records) == 3  # at 5 s, 65 s and 125 s


def waiting(retry_in: float) -> Snapshot:
    """A snapshot: the mlflow backend waits to retry after a refused connection; wandb ships."""
    return Snapshot(
        elapsed=3.0,
        size=1000,
        lines_read=90,
        backends=[
            BackendProgress(
                "mlflow",
                0,
                0,
                0,
                3,
                failed=False,
                lag_seconds=3.0,
                waiting="connection refused",
                retry_in=retry_in,
            ),
            BackendProgress("wandb", 900, 90, 90, 0, failed=False, lag_seconds=0.0),
        ],
    )


def test_status_line_says_which_backend_waits_why_and_until_when() -> None:
    """A backend between two attempts: "waiting for mlflow (connection refused), retry in N s"."""
    text = status_line(waiting(3.6), None)
    assert text == (
        "30 lines/s | waiting for mlflow (connection refused), retry in 4 s, 3 retries"
        " | wandb: caught up"
    )


def test_progress_bar_shows_the_wait_not_a_time_left() -> None:
    """The bar of a waiting backend says what it waits for instead of a meaningless 0:00 left."""
    text = progress_bar(waiting(12.2))
    assert text.endswith("0 B/1000 B waiting for mlflow (connection refused), retry in 12 s")
    assert "left" not in text


def test_progress_bar_without_progress_shows_no_time_left() -> None:
    """Nothing shipped yet: no "0:00 left"."""
    text = progress_bar(snap(2.0, (0, 0), (0, 0)))
    assert "left" not in text


def test_structured_line_names_the_wait() -> None:
    """The key=value status says why a backend waits."""
    assert 'mlflow.waiting="connection refused"' in structured_line(waiting(1.0))
