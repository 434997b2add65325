"""One shipper per state file: the lock, its takeover of gone holders, and real shippers racing."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from crash_support import cursor_of
from support import TF_SHIP, clean_env, in_terminal, wait_for
from terminal import on_a_terminal

from tf_ship.shipper import lock as lock_module
from tf_ship.shipper.lock import Holder, LockHeldError, StateLock, release_held_locks
from tf_ship.shipper.places import STATE_NAME
from tf_ship.shipper.ship import ShipOptions, Shipper, ShipReport
from tf_ship.testing import RecordingBackend

HOST = socket.gethostname()


def lock_of(folder: Path) -> StateLock:
    """A lock of ``folder/.tf-ship-state.json``, as a shipper of that folder takes it."""
    return StateLock(folder / STATE_NAME)


def write_holder(lock: StateLock, **fields: object) -> Holder:
    """Write a lock file as another process would have: our host and PID unless told."""
    me = Holder.me()
    values = {
        "host": me.host,
        "pid": me.pid,
        "started": me.started,
        "boot": me.boot,
        "token": "f" * 16,
        "since": time.time(),
    }
    values.update(fields)
    holder = Holder(**values)  # type: ignore[arg-type]
    lock.path.write_text(holder.to_json())
    return holder


def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def age(path: Path, seconds: float) -> None:
    """Make `path` look `seconds` old."""
    then = time.time() - seconds
    os.utime(path, (then, then))


# -- the lock itself ----------------------------------------------------------------------------


def test_a_free_lock_is_taken_written_and_released(tmp_path: Path) -> None:
    """Created beside the state file with host, PID, start time and boot id; gone on release."""
    lock = lock_of(tmp_path)
    lock.acquire()
    try:
        assert lock.path == tmp_path / ".tf-ship-state.json.lock"
        record = json.loads(lock.path.read_text())
        assert record["host"] == HOST
        assert record["pid"] == os.getpid()
        assert record["started"] == lock_module._start_time(os.getpid())
        assert record["boot"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert lock.owned()
    finally:
        lock.release()
    assert not lock.path.exists()
    lock.release()  # twice: nothing happens


def test_a_running_holder_is_refused_and_named(tmp_path: Path) -> None:
    """A second lock of the same state file (here: of the same, running process) is refused."""
    first = lock_of(tmp_path)
    first.acquire()
    try:
        with pytest.raises(LockHeldError) as raised:
            lock_of(tmp_path).acquire()
        message = str(raised.value)
        assert message.startswith(
            f"another tf-ship ships this log (host {HOST}, PID {os.getpid()}, since "
        )
        assert message.endswith(f"; lock {first.path}): stop it first, or let it finish")
        assert first.owned()
    finally:
        first.release()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"pid": "dead"}, r"process \d+ no longer runs"),
        ({"started": "other"}, rf"process {os.getpid()} no longer runs"),
        ({"boot": "another-boot"}, "the host restarted since"),
    ],
    ids=["dead-pid", "reused-pid", "rebooted"],
)
def test_a_gone_holder_on_this_host_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fields: dict[str, str], reason: str
) -> None:
    """A PID that no longer runs, runs with another start time, or ran before a reboot."""
    lock = lock_of(tmp_path)
    values: dict[str, object] = dict(fields)
    if fields.get("pid") == "dead":
        values["pid"] = dead_pid()
    if fields.get("started") == "other":
        values["started"] = (lock_module._start_time(os.getpid()) or 0) + 1
    write_holder(lock, **values)
    with caplog.at_level(logging.INFO, logger="tf_ship"):
        lock.acquire()
    try:
        assert lock.owned()
        path = re.escape(str(lock.path))
        assert re.search(rf"took over the lock {path} from host .* \({reason}\)", caplog.text)
    finally:
        lock.release()
    assert not lock.path.exists()


def test_another_hosts_lock_counts_while_it_is_refreshed(tmp_path: Path) -> None:
    """Another host: refused while its heartbeat is recent, taken over once it is stale.

    Stale: older than STALE_SECONDS, by the filesystem's clock.
    """
    lock = lock_of(tmp_path)
    write_holder(lock, host="node-elsewhere", pid=4242)
    age(lock.path, lock_module.STALE_SECONDS - 30)
    with pytest.raises(LockHeldError, match="host node-elsewhere, PID 4242"):
        lock.acquire()
    age(lock.path, lock_module.STALE_SECONDS + 30)
    lock.acquire()
    try:
        assert lock.owned()
    finally:
        lock.release()


def test_an_unreadable_lock_is_held_while_young(tmp_path: Path) -> None:
    """An empty lock file (its creator is writing it, or died doing so) is held until stale."""
    lock = lock_of(tmp_path)
    lock.path.write_text("")
    with pytest.raises(LockHeldError, match="a process whose lock is being written"):
        lock.acquire()
    age(lock.path, lock_module.STALE_SECONDS + 1)
    lock.acquire()
    lock.release()
    assert not lock.path.exists()


def test_one_of_many_newcomers_takes_over_a_stale_lock(tmp_path: Path) -> None:
    """Eight newcomers at once on a dead holder's lock: exactly one takes it.

    The others are refused, naming the winner; rounds repeated, to meet the races.
    """
    for round_number in range(10):
        folder = tmp_path / str(round_number)
        folder.mkdir()
        write_holder(lock_of(folder), pid=dead_pid())
        locks = [lock_of(folder) for _ in range(8)]
        barrier = threading.Barrier(len(locks))
        outcome: dict[int, str] = {}

        def take(
            index: int,
            lock: StateLock,
            results: dict[int, str] = outcome,
            start: threading.Barrier = barrier,
        ) -> None:
            start.wait()
            try:
                lock.acquire()
            except LockHeldError as error:
                results[index] = f"held: {error.holder.token if error.holder else None}"
            else:
                results[index] = "won"

        threads = [threading.Thread(target=take, args=(i, lock)) for i, lock in enumerate(locks)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        winners = [i for i, result in outcome.items() if result == "won"]
        assert len(winners) == 1, outcome
        winner = locks[winners[0]]
        assert set(outcome.values()) == {"won", f"held: {winner.me.token}"}
        assert winner.owned()
        winner.release()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path: Path) -> None:
    """A lock taken over meanwhile (after a long stop of its holder) is left to its new holder."""
    lock = lock_of(tmp_path)
    lock.acquire()
    other = write_holder(lock, host="node-elsewhere", pid=7)
    lock.release()
    assert Holder.from_text(lock.path.read_text()) == other


def test_the_heartbeat_refreshes_the_lock_and_reports_its_loss(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The holder refreshes the lock file's time; a lock taken by another calls `on_lost`."""
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
    lost: list[str] = []
    lock = StateLock(tmp_path / STATE_NAME, lost.append)
    lock.acquire()
    try:
        age(lock.path, 1000)
        wait_for(lambda: time.time() - lock.path.stat().st_mtime < 100, "a refreshed lock")
        write_holder(lock, host="node-elsewhere", pid=7)
        wait_for(lambda: bool(lost), "the loss reported")
        reason = "it was removed or taken over by another process"
        assert lost == [f"lost the lock {lock.path}: {reason}"]
        assert not lock.held
    finally:
        lock.release()
    assert lock.path.exists()  # the new holder's


def test_release_held_locks_removes_every_lock_of_the_process(tmp_path: Path) -> None:
    """What a second signal calls before exiting at once."""
    locks = [lock_of(tmp_path / name) for name in ("a", "b")]
    for lock in locks:
        lock.path.parent.mkdir()
        lock.acquire()
    release_held_locks()
    assert [lock.path.exists() for lock in locks] == [False, False]


def test_a_shipper_that_lost_its_lock_stops_and_leaves_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A lock taken over while shipping: stop, say why, and leave the lock to its new holder.

    (Its holder was cut off too long.) No further state is written.
    """
    monkeypatch.setattr(lock_module, "HEARTBEAT_SECONDS", 0.05)
    log = write_log(tmp_path / "logdir", 10)
    state = log.parent / STATE_NAME
    backend = RecordingBackend()
    options = ShipOptions(follow=True, state_file=state, poll_interval=0.05)
    shipper = Shipper(log, {"rec": backend}, options)
    reports: list[ShipReport] = []
    thread = threading.Thread(target=lambda: reports.append(shipper.run()))
    thread.start()
    try:
        wait_for(lambda: len(backend.flushed) == 10 and state.exists(), "the log shipped")
        other = write_holder(StateLock(state), host="node-elsewhere", pid=7)
        thread.join(60)
    finally:
        shipper.request_stop()
        thread.join(60)
    (report,) = reports
    assert report.stop_reason == (
        f"lost the lock {state}.lock: it was removed or taken over by another process"
    )
    assert shipper.state is None
    assert Holder.from_text((tmp_path / "logdir" / f"{STATE_NAME}.lock").read_text()) == other


# -- real shippers ------------------------------------------------------------------------------


def write_log(folder: Path, count: int, start: int = 0) -> Path:
    """Append `count` lines (steps from `start`) to ``folder/torchfort.log``."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "torchfort.log"
    with log.open("a") as stream:
        stream.writelines(
            f"TORCHFORT::WANDB: model: m, step: {i}, loss: {i / 4}\n"
            for i in range(start, start + count)
        )
    return log


def jsonl_steps(path: Path) -> list[int]:
    """The steps of the metric lines of a jsonl output."""
    if not path.exists():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line]


def terminal_child(process: subprocess.Popen[str]) -> int:
    """The PID of the command `script` runs (``exec``-ed by its shell, so the command's own)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
    wait_for(lambda: children.read_text().strip() != "", "script starting the command", 30)
    return int(children.read_text().split()[0])


def screen(text: str) -> list[str]:
    """The lines a terminal shows, progress redraws dropped."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    lines = [raw.rsplit("\r", 1)[-1] for raw in text.replace("\r\n", "\n").split("\n")]
    return [line for line in lines if line and not line.startswith("[")]


def test_two_shippers_started_together_ship_the_log_once(tmp_path: Path) -> None:
    """Two shippers of one 40,000-line log started at once: 40,000 events, one exits 2.

    Both ``tf-ship --no-follow`` run in terminals: one ships every event, the other exits 2 at
    once naming the first (host and PID).

    Before, both shipped everything: 80,000 events.
    """
    logdir = tmp_path / "logdir"
    write_log(logdir, 40_000)
    out = tmp_path / "out.jsonl"
    command = [*TF_SHIP, "--logdir", str(logdir), "--no-follow", "-b", "jsonl",
               "--jsonl-path", str(out)]  # fmt: skip
    script = on_a_terminal(command)
    processes = [
        subprocess.Popen(
            script,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=clean_env(),
        )
        for _ in range(2)
    ]
    pids = [terminal_child(process) for process in processes]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    codes = [process.returncode for process in processes]
    assert sorted(codes) == [0, 2], outputs
    loser = codes.index(2)
    winner = 1 - loser
    shown = screen(outputs[loser])
    assert len(shown) == 1, shown
    assert re.fullmatch(
        rf"tf-ship: error: another tf-ship ships this log \(host {re.escape(HOST)}, "
        rf"PID {pids[winner]}, since \d\d:\d\d:\d\d; lock {re.escape(str(logdir))}/"
        r"\.tf-ship-state\.json\.lock\): stop it first, or let it finish",
        shown[0],
    )
    assert "backend jsonl: FINISHED, 40000 events" in outputs[winner]
    assert jsonl_steps(out) == list(range(40_000))
    assert not (logdir / ".tf-ship-state.json.lock").exists()


def test_a_sigkilled_shippers_lock_is_taken_over(tmp_path: Path) -> None:
    """A shipper killed with SIGKILL leaves its lock; the next run takes it over.

    It says so, and continues from the saved cursor: every line once.
    """
    logdir = tmp_path / "logdir"
    log = write_log(logdir, 20_000)
    out = tmp_path / "out.jsonl"
    state = logdir / STATE_NAME
    command = [*TF_SHIP, "--logdir", str(logdir), "-b", "jsonl", "--jsonl-path", str(out)]
    follower = subprocess.Popen(
        [*command, "--poll-interval", "0.05"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        size = log.stat().st_size
        wait_for(  # cursor_of reads a state file missing between a save's two renames as 0
            lambda: cursor_of(state, "jsonl") == size, "the follower at the end of the log, saved"
        )
        assert (logdir / ".tf-ship-state.json.lock").exists()
    finally:
        follower.send_signal(signal.SIGKILL)
        follower.wait()
    assert (logdir / ".tf-ship-state.json.lock").exists()
    write_log(logdir, 20_000, start=20_000)
    result = in_terminal([*command, "--no-follow"], timeout=120)
    assert result.returncode == 0, result.stdout
    assert (
        f"took over the lock {logdir}/.tf-ship-state.json.lock from host {HOST}, PID "
        f"{follower.pid}, since " in result.stdout
    )
    assert f" (process {follower.pid} no longer runs)" in result.stdout
    assert jsonl_steps(out) == list(range(40_000))
    assert not (logdir / ".tf-ship-state.json.lock").exists()


def test_a_second_signal_exits_at_once_and_still_releases_the_lock(tmp_path: Path) -> None:
    """SIGTERM while a backend hangs in close, then SIGTERM again: the lock is gone.

    The second signal stops waiting for the hanging backend: exit 1 (not everything shipped).
    """
    logdir = tmp_path / "logdir"
    write_log(logdir, 10)
    err = tmp_path / "stderr.txt"
    lock = logdir / ".tf-ship-state.json.lock"
    with err.open("wb") as stream:
        shipper = subprocess.Popen(
            [
                *TF_SHIP,
                "--logdir",
                str(logdir),
                "-b",
                "tf_ship.testing:HangingBackend",
                "--backend-opt",
                "tf_ship.testing:HangingBackend.hang_on=close",
                "--shutdown-timeout",
                "120",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stream,
            env=clean_env(),
        )
    try:
        wait_for(lock.exists, "the lock taken")
        wait_for((logdir / STATE_NAME).exists, "the state saved")
        shipper.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM received" in err.read_text(), "the first SIGTERM handled")
        assert lock.exists()
        shipper.send_signal(signal.SIGTERM)
        assert shipper.wait(60) == 1
    finally:
        if shipper.poll() is None:
            shipper.kill()
            shipper.wait()
    assert not lock.exists()


def test_run_refuses_a_held_log_before_starting_the_application(tmp_path: Path) -> None:
    """``tf-ship run --logdir D -- app`` while another tf-ship ships D: exit 2, no app started."""
    logdir = tmp_path / "logdir"
    write_log(logdir, 10)
    holder = subprocess.Popen(
        [*TF_SHIP, "--logdir", str(logdir), "-b", "null"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    marker = tmp_path / "started"
    try:
        wait_for((logdir / ".tf-ship-state.json.lock").exists, "the holder's lock")
        result = in_terminal(
            [*TF_SHIP, "run", "--logdir", str(logdir), "-b", "null", "--", "touch", str(marker)]
        )
    finally:
        holder.send_signal(signal.SIGTERM)
        holder.wait(60)
    assert result.returncode == 2, result.stdout
    shown = screen(result.stdout)
    assert shown[:-1] == [f"tf-ship: TorchFort log folder: {logdir}"]
    line = shown[-1]
    assert line.startswith(f"tf-ship: error: another tf-ship ships this log (host {HOST}, PID ")
    assert f"PID {holder.pid}, since " in line
    assert not marker.exists()
