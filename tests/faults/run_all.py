"""Run the fault suite and print, per kind of fault, the faults injected and the studies lost.

    python tests/faults/run_all.py            # the seeded CI subset (about 30 faults)
    python tests/faults/run_all.py --full     # every kill point and fault (more than 200 faults)
    python tests/faults/run_all.py --full --seed 7 --json /tmp/faults.json

Needs root (the tape simulator mounts FUSE file systems and PostgreSQL runs as the postgres user),
Debian's orthanc and postgresql-15 packages. Exits with status 1 when a study was lost, a run
ended without a clear message, or a job was not finished by the clean runs after a fault.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.faults import scenarios  # noqa: E402
from tests.faults.harness import Bench, Outcome  # noqa: E402

DEFAULT_SEED = 20261204


def problems_of(outcome: Outcome) -> list[str]:
    """Return what makes an outcome a failure of the product: lost studies, crashes, unclear messages, unfinished jobs."""
    problems = [f"lost {study}: {reason}" for study, reason in {**outcome.lost_after_fault,
                                                                 **outcome.lost_after_rerun}.items()]
    problems += [message for message in outcome.messages if message.startswith(("CRASH", "UNCLEAR"))]
    problems += [f"not finished after {outcome.reruns} clean runs: {item}" for item in outcome.unfinished]
    return problems


def run_suite(full: bool, seed: int, folder: Path, kinds: set[str] | None = None,
              log: Callable[[str], None] = print) -> list[Outcome]:
    """Start the bench, PostgreSQL and the tape simulator's folder, and run every fault of the list."""
    from tests.pg_fixture import PostgresCluster

    bench = Bench(folder / "bench")
    cluster = PostgresCluster()
    outcomes: list[Outcome] = []
    try:
        cluster.start()
        tape_folder = Path(tempfile.mkdtemp(prefix="faults-tape-"))
        context = scenarios.Context(postgres=cluster, tape_folder=tape_folder)
        counts = scenarios.calibrate(bench)
        log(f"calibration run: {json.dumps(counts)}")
        faults = scenarios.fault_list(counts, full=full, seed=seed)
        if kinds:
            faults = [fault for fault in faults if fault.kind in kinds]
        for index, fault in enumerate(faults, 1):
            started = time.monotonic()
            outcome = fault.run(bench, context)
            outcomes.append(outcome)
            problems = problems_of(outcome)
            log(f"[{index}/{len(faults)}] {outcome.kind} {outcome.point}: injected={outcome.injected} "
                f"lost={outcome.lost} reruns={outcome.reruns} {time.monotonic() - started:.1f}s"
                + ("".join(f"\n    PROBLEM {problem}" for problem in problems)))
    finally:
        bench.close()
        cluster.stop()
    return outcomes


def summary_table(outcomes: list[Outcome]) -> str:
    """Return a Markdown table: per kind, faults run, faults injected, studies lost, problems."""
    rows: dict[str, list[int]] = {}
    for outcome in outcomes:
        row = rows.setdefault(outcome.kind, [0, 0, 0, 0])
        row[0] += 1
        row[1] += outcome.injected
        row[2] += outcome.lost
        row[3] += len(problems_of(outcome))
    lines = ["| fault | runs | injected | studies lost | problems |", "|---|---:|---:|---:|---:|"]
    for kind, (runs, injected, lost, problems) in sorted(rows.items()):
        lines.append(f"| {kind} | {runs} | {injected} | {lost} | {problems} |")
    totals = [sum(row[index] for row in rows.values()) for index in range(4)]
    lines.append(f"| **total** | {totals[0]} | {totals[1]} | {totals[2]} | {totals[3]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="run every fault, not the CI subset")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the kill points and fault offsets")
    parser.add_argument("--kind", action="append", help="run only faults of this kind (repeatable)")
    parser.add_argument("--json", type=Path, help="write every outcome to this JSON file")
    args = parser.parse_args(argv)

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="faults-") as folder:
        outcomes = run_suite(args.full, args.seed, Path(folder), set(args.kind) if args.kind else None)
    seconds = time.monotonic() - started
    print(summary_table(outcomes))
    print(f"\n{len(outcomes)} faults, {sum(item.injected for item in outcomes)} injected, "
          f"{sum(item.lost for item in outcomes)} studies lost, {seconds:.0f} s, seed {args.seed}")
    if args.json:
        args.json.write_text(json.dumps([vars(item) for item in outcomes], indent=1, default=str))
    return 1 if any(problems_of(item) for item in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
