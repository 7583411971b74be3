"""The faults: how each kind is injected, and the list of faults a seeded run goes through.

Every fault runs the same way. The bench restores the data set in Orthanc and gives the run a fresh
target, the fault goes into one pipeline run, and the invariant is checked. Then the clean pipeline
runs until the job is done, and the invariant is checked again (Bench.finish).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.faults.harness import Bench, Outcome, Target, first_failure
from tests.faults.proxy import Rule

# Events of a clean run of the data set (measured by calibrate(); these are the fallback values).
DEFAULT_COUNTS = {"http": 168, "delete": 13, "catalog_before": 26, "catalog_after": 26, "write": 6, "rename": 12,
                  "verify": 12}

# Text that marks a failure without a clear message: an uncaught exception or a module that printed no result.
CRASH_MARKERS = ("Traceback (most recent call last)", "output is not JSON", "no output")


@dataclass
class Fault:
    """One fault to inject: its kind, its point (K or a variant) and the function that runs it."""

    kind: str
    point: str
    run: Callable[[Bench, "Context"], Outcome]


@dataclass
class Context:
    """What some faults need besides the bench: a PostgreSQL cluster and the tape simulator's folder."""

    postgres: Any = None
    tape_folder: Path | None = None


def calibrate(bench: Bench) -> dict[str, int]:
    """Run the clean pipeline once and count its events, so the kill points cover the whole run."""
    bench.reset_orthanc()
    bench.proxy.reset()
    target = bench.new_target()
    counts_path = target.folder / "counts.json"
    result = bench.run_driver(target, counts_path=counts_path)
    if result.returncode != 0 or not counts_path.exists():
        raise RuntimeError(f"the clean calibration run failed: {first_failure(result)}")
    counts = json.loads(counts_path.read_text())
    counts["http"] = bench.proxy.requests
    counts["delete"] = bench.proxy.by_method.get("DELETE", 0)
    return counts


def note_crash(outcome: Outcome, result: Any) -> None:
    """Record a run that ended without a clear message (not counting a SIGKILL we sent)."""
    if result.killed:
        return
    text = result.stderr + " ".join(str(step.get("msg", "")) for step in result.steps.values())
    if result.returncode not in (0, 2) or any(marker in text for marker in CRASH_MARKERS):
        outcome.messages.append("CRASH: " + (result.stderr.strip()[-800:] or first_failure(result)))


def run_with(bench: Bench, kind: str, point: str, target: Target | None = None, rules: list[Rule] | None = None,
             kill: str | None = None, hook: Callable[[], None] | None = None,
             after: Callable[[Target], None] | None = None, **driver_options: Any) -> Outcome:
    """Inject one fault into one pipeline run, check the invariant, then finish the job and check again."""
    bench.reset_orthanc()
    bench.proxy.reset()
    target = target or bench.new_target()
    bench.proxy.rules = list(rules or [])
    if hook:
        bench.proxy.on_hook = hook
    result = bench.run_driver(target, kill=kill, **driver_options)
    injected = 1 if (result.killed or bench.proxy.injected) else 0
    outcome = Outcome(kind=kind, point=point, injected=injected)
    note_crash(outcome, result)
    if result.returncode != 0 and not result.killed:
        outcome.messages.append(first_failure(result))
    if after:
        after(target)
    outcome.lost_after_fault = bench.lost(target)
    bench.finish(target, outcome)
    return outcome


# -- SIGKILL at systematic points ----------------------------------------------------------------

def kill_driver_at(kind: str, number: int) -> Fault:
    return Fault(f"kill_{kind}", str(number),
                 lambda bench, context: run_with(bench, f"kill_{kind}", str(number), kill=f"{kind}:{number}"))


def kill_after_request(number: int, method: str | None = None) -> Fault:
    kind = "kill_http" if method is None else f"kill_http_{method.lower()}"
    return Fault(kind, str(number), lambda bench, context: run_with(
        bench, kind, str(number), rules=[Rule("kill", number, method=method)]))


# -- HTTP faults through the proxy ---------------------------------------------------------------

def http_fault(fault: str, number: int) -> Fault:
    return Fault(f"http_{fault}", str(number), lambda bench, context: run_with(
        bench, f"http_{fault}", str(number), rules=[Rule(fault, number)]))


def orthanc_restart(number: int) -> Fault:
    def run(bench: Bench, context: Context) -> Outcome:
        return run_with(bench, "orthanc_restart", str(number), rules=[Rule("hook", number)],
                        hook=lambda: bench.orthanc.restart(),
                        connection={"retries": 4, "retry_backoff": 0.5})
    return Fault("orthanc_restart", str(number), run)


# -- new instances after export, before reclaim --------------------------------------------------

def late_instance(variant: str, study_index: int) -> Fault:
    """Upload one more instance into a selected study at a point between its export and its deletion.

    after_export: when the reclaim step starts (its first GET /statistics);
    before_delete_N: just before the N-th DELETE reaches Orthanc.
    """

    def run(bench: Bench, context: Context) -> Outcome:
        if variant == "after_export":
            rule = Rule("hook_before", 1, method="GET", path_prefix="/statistics")
        else:
            rule = Rule("hook_before", int(variant.rsplit("_", 1)[1]), method="DELETE")
        fired = threading.Event()

        def hook() -> None:
            if not fired.is_set():
                fired.set()
                bench.add_late_instance(study_index)

        return run_with(bench, "late_instance", f"{variant}/study{study_index}", rules=[rule], hook=hook)

    return Fault("late_instance", f"{variant}/study{study_index}", run)


# -- the catalog locked or unavailable -----------------------------------------------------------

def sqlite_locked(number: int, seconds: float = 2.5) -> Fault:
    def run(bench: Bench, context: Context) -> Outcome:
        target = bench.new_target()

        def hold_lock() -> None:
            def hold() -> None:
                # Before the archive step the catalog does not exist yet: lock it as soon as it does.
                if not wait_for(lambda: os.path.exists(target.catalog["catalog_path"])):
                    return
                conn = sqlite3.connect(target.catalog["catalog_path"], timeout=30, isolation_level=None)
                conn.execute("BEGIN EXCLUSIVE")
                time.sleep(seconds)
                conn.execute("ROLLBACK")
                conn.close()
            threading.Thread(target=hold, daemon=True).start()
            time.sleep(0.1)

        return run_with(bench, "catalog_sqlite_locked", str(number), target=target, rules=[Rule("hook", number)],
                        hook=hold_lock)
    return Fault("catalog_sqlite_locked", str(number), run)


def postgres_fault(variant: str, number: int) -> Fault:
    """Lock the copies table for a while, or terminate the catalog's connections, at request number."""

    def run(bench: Bench, context: Context) -> Outcome:
        import psycopg

        cluster = context.postgres
        database = cluster.create_database()
        dsn = cluster.dsn(database)
        target = bench.new_target(backend="postgresql", dsn=dsn)
        admin_dsn = cluster.dsn("postgres")

        def lock() -> None:
            def hold() -> None:
                # Before the archive step the copies table does not exist yet: lock it as soon as it does.
                with psycopg.connect(dsn, autocommit=True) as conn:
                    exists = "SELECT to_regclass('copies') IS NOT NULL"
                    if not wait_for(lambda: conn.execute(exists).fetchone()[0]):
                        return
                    with conn.transaction():
                        conn.execute("LOCK TABLE copies IN ACCESS EXCLUSIVE MODE")
                        time.sleep(2.5)
            threading.Thread(target=hold, daemon=True).start()
            time.sleep(0.1)

        def terminate() -> None:
            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                             "AND pid <> pg_backend_pid()", (database,))

        hook = lock if variant == "locked" else terminate
        return run_with(bench, f"catalog_postgresql_{variant}", str(number), target=target,
                        rules=[Rule("hook", number)], hook=hook)

    return Fault(f"catalog_postgresql_{variant}", str(number), run)


def wait_for(condition: Callable[[], Any], seconds: float = 20.0) -> bool:
    """Poll condition every 50 ms until it is true or seconds have passed; return whether it became true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


# -- two runs at once ----------------------------------------------------------------------------

def concurrent_runs(mode: str, delay: float) -> Fault:
    """Start a second pipeline on the same server, volume, catalog and lock folder while the first runs.

    mode wait: the second run waits for the lock (lock_timeout 60 s) and then finds the work done.
    mode exit: the second run gives up after 0.5 s, and its message must name the lock held by another run.
    """

    def run(bench: Bench, context: Context) -> Outcome:
        bench.reset_orthanc()
        bench.proxy.reset()
        target = bench.new_target()
        first = bench.start_driver(target)
        time.sleep(delay)
        second = bench.start_driver(target, lock_timeout=60.0 if mode == "wait" else 0.5)
        first_out, first_err = first.communicate(timeout=300)
        second_out, second_err = second.communicate(timeout=300)
        outcome = Outcome(kind=f"concurrent_{mode}", point=f"{delay:.2f}s", injected=1)
        from tests.faults.harness import RunResult, parse_steps

        for process, out, err in ((first, first_out, first_err), (second, second_out, second_err)):
            result = RunResult(process.returncode, parse_steps(out), err, 0.0)
            note_crash(outcome, result)
            if result.returncode != 0:
                message = first_failure(result)
                outcome.messages.append(message)
                if "another run holds" not in message and mode == "exit":
                    outcome.messages.append("UNCLEAR: a run blocked by the lock did not name it: " + message)
        duplicates = duplicate_copies(target)
        if duplicates:
            outcome.messages.append(f"UNCLEAR: {duplicates} studies were written twice to one volume")
        outcome.lost_after_fault = bench.lost(target)
        bench.finish(target, outcome)
        return outcome

    return Fault(f"concurrent_{mode}", f"{delay:.2f}s", run)


def duplicate_copies(target: Target) -> int:
    conn = sqlite3.connect(target.catalog["catalog_path"], timeout=30)
    try:
        rows = conn.execute("SELECT COUNT(*) FROM (SELECT orthanc_study_id FROM copies WHERE state IN "
                            "('written', 'verified') GROUP BY orthanc_study_id, volume_serial, content_key "
                            "HAVING COUNT(*) > 1)").fetchone()
    finally:
        conn.close()
    return int(rows[0])


# -- tape faults (the tape simulator) ------------------------------------------------------------

def tape_target(bench: Bench, context: Context, capacity_bytes: int = 64 * 1024 * 1024) -> tuple[Target, Any]:
    """Build a one-drive library with two cartridges, format the first and mount it with the simulator's ltfs."""
    from tests.tapesim.fixture import build_library

    assert context.tape_folder is not None
    state = context.tape_folder / f"lib{bench.counter + 1:04d}"
    library = build_library(state, drives=1, barcodes=["FLT001L8", "FLT002L8"], capacity_bytes=capacity_bytes,
                            index_write_seconds=0.1, sync_write_seconds=0.01)
    library.run("mtx", "-f", library.changer, "load", "1", "0", check=True)
    library.run("mkltfs", "-d", library.drives[0].sg, check=True)
    mountpoint = state / "mnt"
    mounted = library.mount(0, mountpoint)
    if mounted.returncode != 0:
        raise RuntimeError(f"ltfs did not mount the test cartridge: {mounted.stderr}")
    ltfs = {"device": library.drives[0].sg, "state": str(state), "barcodes": {"FLT001": "FLT001L8", "FLT002": "FLT002L8"},
            "env": library.env}
    return bench.new_target(volume_path=mountpoint, ltfs=ltfs), library


def tape_fault(variant: str, number: int) -> Fault:
    """A fault on the tape side, at the number-th download of an instance file.

    full: another writer fills the cartridge, so the container write hits ENOSPC mid-study;
    unmounted: the volume is lazily unmounted underneath the run (fusermount3 -u -z);
    write_error: the ltfs process dies, so every further write fails (ENOTCONN);
    flipped: after the containers were written and the index is on tape, one byte of one container
             is inverted on the medium before verification;
    kill: the driver is killed at that request while it writes to LTFS.
    """

    def run(bench: Bench, context: Context) -> Outcome:
        bench.reset_orthanc()
        target, library = tape_target(bench, context)
        mountpoint = target.volume_path
        rules = [Rule("hook", number, method="GET", path_prefix="/instances/")]

        def fill() -> None:
            try:
                with open(mountpoint / "filler.bin", "wb") as handle:
                    while True:
                        handle.write(b"\0" * (1024 * 1024))
            except OSError:
                pass  # ENOSPC: the cartridge is full, which is the point

        def unmount() -> None:
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)

        def kill_ltfs() -> None:
            pid = library.ltfs_pid(0)
            if pid:
                os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True, check=False)

        try:
            if variant == "flipped":
                return flipped_container(bench, target, library, number)
            if variant == "kill":
                return run_with(bench, "tape_kill", str(number), target=target,
                                rules=[Rule("kill", number, method="GET", path_prefix="/instances/")])
            hook = {"full": fill, "unmounted": unmount, "write_error": kill_ltfs}[variant]
            after = (lambda target: next_cartridge(library, target)) if variant == "full" else None
            return run_with(bench, f"tape_{variant}", str(number), target=target, rules=rules, hook=hook, after=after)
        finally:
            library.cleanup()

    return Fault(f"tape_{variant}", str(number), run)


def next_cartridge(library: Any, target: Target) -> None:
    """Replace the full cartridge with a fresh one, as an operator would, so the next run can finish."""
    library.run("umount", str(target.volume_path))
    library.wait_for_ltfs_exit(0)
    library.run("mtx", "-f", library.changer, "unload", "1", "0", check=True)
    library.run("mtx", "-f", library.changer, "load", "2", "0", check=True)
    library.run("mkltfs", "-d", library.drives[0].sg, check=True)
    library.mount(0, target.volume_path)


def flipped_container(bench: Bench, target: Target, library: Any, number: int) -> Outcome:
    """Archive without verifying, flip a byte of the number-th container on tape, then run the pipeline."""
    from tests.tapesim import library as tapesim_library

    # The archive step reads back each container it wrote (6 read-backs for the data set), so the 7th
    # read-back is the verify step's first: killed there, the catalog holds written copies only.
    bench.proxy.reset()
    process = bench.start_driver(target, kill="verify:7")
    process.communicate(timeout=300)
    library.run("umount", str(target.volume_path))
    library.wait_for_ltfs_exit(0)
    outcome = Outcome(kind="tape_flipped", point=str(number), injected=0)

    conn = sqlite3.connect(target.catalog["catalog_path"])
    rows = conn.execute("SELECT path, orthanc_study_id FROM copies WHERE state = 'written' ORDER BY id").fetchall()
    conn.close()
    if rows:
        path, study_id = rows[(number - 1) % len(rows)]
        stored = tapesim_library.stored_file_path(library.state, "FLT001L8", path)
        size = stored.stat().st_size
        offset = random.Random(number).randrange(size)
        library.flip_byte("FLT001L8", path, offset)
        outcome.injected = 1
        outcome.point = f"{number}/offset{offset}"
    library.mount(0, target.volume_path)

    # The run after the flip must verify, find the damage and delete every study but the damaged one.
    result = bench.run_driver(target)
    note_crash(outcome, result)
    outcome.lost_after_fault = bench.lost(target)
    if rows:
        failures = result.steps.get("verify", {}).get("failures", [])
        if study_id not in {item["orthanc_id"] for item in failures}:
            outcome.messages.append(f"UNCLEAR: verification did not report the flipped container of {study_id}")
    bench.finish(target, outcome)
    return outcome


# -- the list of faults --------------------------------------------------------------------------

def spread(count: int, points: int, rng: random.Random) -> list[int]:
    """Return up to `points` kill points spread over 1..count: evenly spaced, each moved by a seeded offset."""
    if count <= points:
        return list(range(1, count + 1))
    step = count / points
    return sorted({min(count, int(index * step) + 1 + rng.randrange(max(1, int(step)))) for index in range(points)})


def fault_list(counts: dict[str, int], full: bool, seed: int, with_postgres: bool = True,
               with_tape: bool = True) -> list[Fault]:
    """Return the faults of one run: every kind, at points spread over the whole pipeline."""
    rng = random.Random(seed)
    size = (lambda full_points, ci_points: full_points if full else ci_points)
    faults: list[Fault] = []

    for number in spread(counts["http"], size(56, 5), rng):
        faults.append(kill_after_request(number))
    for number in spread(counts["delete"], size(13, 2), rng):
        faults.append(kill_after_request(number, method="DELETE"))
    for kind in ("catalog_before", "catalog_after"):
        for number in spread(counts[kind], size(26, 2), rng):
            faults.append(kill_driver_at(kind, number))
    for kind in ("write", "rename", "verify"):
        for number in spread(counts[kind], size(12, 1), rng):
            faults.append(kill_driver_at(kind, number))

    for fault in ("status500", "delay", "truncate", "reset"):
        for number in spread(counts["http"], size(10, 1), rng):
            faults.append(http_fault(fault, number))
    for number in spread(counts["http"], size(5, 1), rng):
        faults.append(http_fault("down", number))
    for number in spread(counts["http"], size(3, 1), rng):
        faults.append(orthanc_restart(number))

    variants = ["after_export", "before_delete_1", "before_delete_3", "before_delete_6"]
    for variant in variants[: size(4, 2)]:
        faults.append(late_instance(variant, rng.randrange(6)))

    for number in spread(counts["http"], size(3, 1), rng):
        faults.append(sqlite_locked(number))
    if with_postgres:
        for variant in ("locked", "unavailable"):
            for number in spread(counts["http"], size(3, 1), rng):
                faults.append(postgres_fault(variant, number))

    for mode in ("wait", "exit"):
        for delay in [0.3, 1.0, 2.0][: size(3, 1)]:
            faults.append(concurrent_runs(mode, delay))

    if with_tape:
        instance_downloads = 13
        for variant in ("full", "unmounted", "write_error", "flipped", "kill"):
            for number in spread(instance_downloads, size(3, 1), rng):
                faults.append(tape_fault(variant, number))
    return faults
