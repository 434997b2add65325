"""The log changing under the shipper's feet, with the real `tf-ship` command.

Truncation, deletion and re-creation, and replacement (a new file renamed over the log), both
while `tf-ship` follows the log and between two one-shot runs that share a state file: each
change is noticed and reported, the new content is shipped entirely, and nothing of the old
content is shipped twice. Every line is unique (its step is a sequence number), so the jsonl
output tells exactly which lines arrived and how often.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from support import wait_for

TF_SHIP = [sys.executable, "-m", "tf_ship"]
DEADLINE = 30.0
NOTICE = ("truncated", "rewritten", "replaced", "new file", "changed below")


def lines(steps: Iterable[int]) -> bytes:
    """Unique metric lines: the step is the sequence number."""
    return b"".join(
        b"TORCHFORT::WANDB: model: m, step: %d, loss: %g\n" % (step, step / 3) for step in steps
    )


def append(path: Path, data: bytes) -> None:
    """Append the way TorchFort does: O_APPEND, one write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def shipped(out: Path) -> collections.Counter[int]:
    """How often each step arrived in the jsonl output (complete lines only)."""
    if not out.exists():
        return collections.Counter()
    text = out.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    return collections.Counter(
        int(record["step"])
        for record in map(json.loads, complete.splitlines())
        if "metric" in record
    )


def exactly_once(out: Path, steps: Iterable[int]) -> None:
    """Every step in `steps` arrived exactly once, and nothing else arrived."""
    counts = shipped(out)
    want = collections.Counter(steps)
    assert counts == want, {
        "missing": sorted((want - counts).elements()),
        "extra": sorted((counts - want).elements()),
    }


def notices(stderr: str) -> list[str]:
    """The lines of stderr that report a change of the log."""
    return [line for line in stderr.splitlines() if any(word in line for word in NOTICE)]


def skipped_total(stderr: str) -> int:
    """The number of skipped lines from the final summary."""
    for line in stderr.splitlines():
        if "skipped " in line and "lines of" in line:
            return int(line.rsplit("skipped ", 1)[1].split()[0])
    pytest.fail(f"no summary in stderr:\n{stderr}")


# -- while running -----------------------------------------------------------------------------


class Follower:
    """A `tf-ship` following the log, shipping to a jsonl file."""

    def __init__(self, log: Path, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            [
                *TF_SHIP,
                "--log-file",
                str(log),
                "-b",
                "jsonl",
                "--jsonl-path",
                str(out),
                "--no-state",
                "--poll-interval",
                "0.05",
                "--batch-size",
                "7",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def has(self, steps: Iterable[int]) -> None:
        """Wait until every step in `steps` has arrived."""
        wanted = set(steps)
        wait_for(
            lambda: wanted <= set(shipped(self.out)),
            f"steps {min(wanted)}..{max(wanted)}",
            DEADLINE,
        )

    def stop(self) -> str:
        """SIGTERM, wait, and return stderr."""
        self.process.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.process.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
            pytest.fail(f"tf-ship did not stop on SIGTERM:\n{stderr}")
        assert self.process.returncode == 0, stderr
        return stderr


def truncate(log: Path, new: bytes, _: Path) -> None:
    """Cut the log to nothing, then the writer (O_APPEND) goes on at the new end."""
    os.truncate(log, 0)
    append(log, new)


def recreate(log: Path, new: bytes, _: Path) -> None:
    """Delete the log; a new one appears at the same path."""
    log.unlink()
    append(log, new)


def replace(log: Path, new: bytes, scratch: Path) -> None:
    """Write a new file beside the log and rename it over the log."""
    scratch.write_bytes(new)
    scratch.replace(log)


CHANGES = [truncate, recreate, replace]


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.__name__)
def test_change_while_running_is_noticed_and_new_content_shipped(
    tmp_path: Path, change: Callable[[Path, bytes, Path], None]
) -> None:
    """While following: the change is reported, the new content arrives entirely, twice over.

    The log goes through two such changes (the second with fewer lines than the first, so
    that a stale offset would skip some), new lines are appended after each, and nothing of
    the old content is shipped again.
    """
    log, out, scratch = tmp_path / "torchfort.log", tmp_path / "out.jsonl", tmp_path / "new"
    append(log, lines(range(40)))
    follower = Follower(log, out)
    try:
        follower.has(range(40))
        change(log, lines(range(100, 130)), scratch)
        follower.has(range(100, 130))
        append(log, lines(range(130, 140)))
        follower.has(range(130, 140))
        change(log, lines(range(200, 205)), scratch)
        follower.has(range(200, 205))
        append(log, lines(range(205, 210)))
        follower.has(range(205, 210))
    finally:
        stderr = follower.stop()
    exactly_once(out, [*range(40), *range(100, 140), *range(200, 210)])
    assert len(notices(stderr)) == 2, stderr
    assert skipped_total(stderr) == 0, stderr


def test_truncated_and_regrown_past_the_cursor_while_running(tmp_path: Path) -> None:
    """Truncated and rewritten longer than before in one go: the fingerprint notices it."""
    log, out = tmp_path / "torchfort.log", tmp_path / "out.jsonl"
    append(log, lines(range(10)))
    follower = Follower(log, out)
    try:
        follower.has(range(10))
        fd = os.open(log, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, lines(range(1000, 1050)))
        finally:
            os.close(fd)
        follower.has(range(1000, 1050))
    finally:
        stderr = follower.stop()
    exactly_once(out, [*range(10), *range(1000, 1050)])
    assert notices(stderr), stderr


# -- while stopped -----------------------------------------------------------------------------


def one_shot(log: Path, out: Path) -> str:
    """Run `tf-ship --no-follow` with the state file beside the log; return stderr."""
    result = subprocess.run(
        [
            *TF_SHIP,
            "--log-file",
            str(log),
            "--no-follow",
            "-b",
            "jsonl",
            "--jsonl-path",
            str(out),
            "--batch-size",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "new_steps",
    [range(100, 120), range(100, 105), range(100, 160)],
    ids=["same-size", "shorter", "longer"],
)
@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.__name__)
def test_change_while_stopped_is_noticed_by_the_next_run(
    tmp_path: Path, change: Callable[[Path, bytes, Path], None], new_steps: range
) -> None:
    """A change between two one-shot runs: the second run reports it, ships the new content.

    The runs share the state file; the log is truncated, re-created or replaced, with less, as
    much or more content than before, and the new content is shipped exactly once.
    """
    log, out, scratch = tmp_path / "torchfort.log", tmp_path / "out.jsonl", tmp_path / "new"
    append(log, lines(range(20)))
    first = one_shot(log, out)
    exactly_once(out, range(20))
    assert not notices(first), first
    assert (tmp_path / ".tf-ship-state.json").exists()
    change(log, lines(new_steps), scratch)
    second = one_shot(log, out)
    exactly_once(out, [*range(20), *new_steps])
    assert len(notices(second)) == 1, second
    assert skipped_total(second) == 0, second


def test_unchanged_file_resumes_without_reshipping(tmp_path: Path) -> None:
    """An unchanged log resumes at its cursor, without a notice.

    A run with nothing new ships nothing; a run after appends ships only the appended lines.
    """
    log, out = tmp_path / "torchfort.log", tmp_path / "out.jsonl"
    append(log, lines(range(30)))
    one_shot(log, out)
    exactly_once(out, range(30))
    again = one_shot(log, out)
    exactly_once(out, range(30))
    assert not notices(again), again
    append(log, lines(range(30, 45)))
    more = one_shot(log, out)
    exactly_once(out, range(45))
    assert not notices(more), more


def test_copy_with_the_same_content_and_more_resumes(tmp_path: Path) -> None:
    """A copy with the same bytes and more is a new file: reported, shipped from its start.

    The copy holds the same bytes before the cursor and new lines after, but it is a new inode,
    so the old lines come again.

    This pins down the rule: identity first. A file that is not the same file is new content,
    even when its bytes agree (the tool cannot tell a copy from a rerun that logged the same).
    """
    log, out, scratch = tmp_path / "torchfort.log", tmp_path / "out.jsonl", tmp_path / "new"
    append(log, lines(range(10)))
    one_shot(log, out)
    scratch.write_bytes(lines(range(10)) + lines(range(10, 15)))
    scratch.replace(log)
    second = one_shot(log, out)
    assert len(notices(second)) == 1, second
    counts = shipped(out)
    assert [counts[step] for step in range(15)] == [2] * 10 + [1] * 5
