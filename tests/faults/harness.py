"""The fault bench: one private Orthanc behind a fault proxy, a data set, and one archive target per fault.

A Bench owns the Orthanc and the proxy for a whole session. For each fault it restores the
original studies in Orthanc, gives the run a fresh catalog, volume, lock folder and log, runs the
driver (tests/faults/driver.py) as a subprocess, and checks the invariant after the fault and
again after the clean runs that must finish the job.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

from tests.faults import invariant
from tests.faults.proxy import FaultProxy
from tools import demo_data
from tools.orthanc_local import LocalOrthanc

DRIVER = Path(__file__).resolve().with_name("driver.py")
SERVER = "faultpacs"
USERNAME = "archiver"

# Old studies that every run selects, and one recent study that no run may touch.
# (shape, instances, StudyDate, seed)
OLD_STUDIES = (("ct", 4, "20050310", 11), ("mr", 3, "20060704", 12), ("tiny", 1, "20070101", 13),
               ("cr", 1, "20080229", 14), ("us", 2, "20091111", 15), ("tiny", 2, "20100505", 16))
RECENT_STUDY = ("tiny", 1, None, 17)
IMAGE_SIZE = 64

# How the modules talk to Orthanc during fault runs: a short timeout so that a delayed answer
# times out, and quick retries so that a run stays short.
CONNECTION_DEFAULTS = {"timeout": 2.0, "retries": 2, "retry_backoff": 0.2}


@dataclass
class Target:
    """Where one fault run writes: catalog, volume, lock folder and progress log."""

    folder: Path
    catalog: dict[str, Any]
    volume_path: Path
    lock_dir: Path
    log_path: Path
    ltfs: dict[str, Any] | None = None
    required_copies: int = 1

    def volume_args(self, lock_timeout: float = 60.0) -> dict[str, Any]:
        return {"volume_path": str(self.volume_path), "lock_dir": str(self.lock_dir), "lock_timeout": lock_timeout,
                "volume_reserve_bytes": 0}


@dataclass
class RunResult:
    """Exit status and per-step results of one driver run."""

    returncode: int
    steps: dict[str, dict[str, Any]]
    stderr: str
    seconds: float

    @property
    def killed(self) -> bool:
        return self.returncode == -9


@dataclass
class Outcome:
    """What one fault did: the studies lost after the fault and after the clean runs, and errors seen."""

    kind: str
    point: str
    injected: int
    lost_after_fault: dict[str, str] = field(default_factory=dict)
    lost_after_rerun: dict[str, str] = field(default_factory=dict)
    unfinished: list[str] = field(default_factory=list)
    reruns: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return len(set(self.lost_after_fault) | set(self.lost_after_rerun))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def build_dataset() -> list[tuple[demo_data.GeneratedStudy, list[bytes]]]:
    studies = []
    for shape, count, study_date, seed in (*OLD_STUDIES, RECENT_STUDY):
        if study_date is None:
            study_date = time.strftime("%Y%m%d", time.gmtime())
        study = demo_data.generate_study(shape, n_instances=count, study_date=study_date, seed=seed,
                                         rows=IMAGE_SIZE, columns=IMAGE_SIZE)
        studies.append((study, [study.build_file(index) for index in range(count)]))
    return studies


def late_instance(study: demo_data.GeneratedStudy) -> bytes:
    """Build one more instance of a generated study: same StudyInstanceUID, a new SOPInstanceUID."""
    bigger = demo_data.generate_study(study.shape.name,
                                      n_instances=study.n_instances + 1, study_date=study.study_date,
                                      seed=study.seed, rows=study.rows, columns=study.columns)
    return bigger.build_file(study.n_instances)


class Bench:
    """One Orthanc (with authentication) behind a FaultProxy, reset to the data set before each fault."""

    def __init__(self, folder: Path, tapesim_env: dict[str, str] | None = None):
        self.folder = folder
        self.password = secrets.token_urlsafe(16)
        self.orthanc = LocalOrthanc(folder / "orthanc", users={USERNAME: self.password}, stable_age=1,
                                    sync_storage=False).start()
        self.proxy = FaultProxy(self.orthanc.url).start()
        self.session = requests.Session()
        self.session.auth = (USERNAME, self.password)
        self.dataset = build_dataset()
        self.originals = invariant.Originals()
        self.old_study_ids: list[str] = []
        self.recent_study_id = ""
        self.counter = 0
        self.base_env = dict(os.environ)
        if tapesim_env:
            self.base_env.update(tapesim_env)
        self.base_env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                       self.base_env.get("PYTHONPATH", "")])

    @property
    def auth(self) -> tuple[str, str]:
        return (USERNAME, self.password)

    def close(self) -> None:
        self.proxy.stop()
        self.session.close()
        self.orthanc.stop()

    # -- Orthanc state --------------------------------------------------------------------------

    def reset_orthanc(self) -> None:
        """Delete every study and upload the data set again, so each fault starts from the same studies."""
        # A request that the proxy still keeps from the last run (a delayed DELETE) must not reach the new data set.
        self.proxy.wait_idle()
        for study_id in self.session.get(f"{self.orthanc.url}/studies", timeout=30).json():
            self.session.delete(f"{self.orthanc.url}/studies/{study_id}", timeout=30).raise_for_status()
        self.originals = invariant.Originals()
        self.old_study_ids = []
        for index, (study, files) in enumerate(self.dataset):
            study_id = None
            for data in files:
                study_id, instance_id = self.upload(data)
                self.originals.add(study_id, instance_id, md5(data))
            if index < len(OLD_STUDIES):
                self.old_study_ids.append(study_id)
            else:
                self.recent_study_id = study_id

    def upload(self, data: bytes) -> tuple[str, str]:
        response = self.session.post(f"{self.orthanc.url}/instances", data=data, timeout=30,
                                     headers={"Content-Type": "application/dicom"})
        response.raise_for_status()
        answer = response.json()
        return answer["ParentStudy"], answer["ID"]

    def add_late_instance(self, study_index: int) -> str:
        """Upload one more instance into an old study and add it to the originals; return the study ID."""
        study, _ = self.dataset[study_index]
        data = late_instance(study)
        study_id, instance_id = self.upload(data)
        self.originals.add(study_id, instance_id, md5(data))
        return study_id

    # -- targets and runs -----------------------------------------------------------------------

    def new_target(self, backend: str = "sqlite", dsn: str | None = None, volume_path: Path | None = None,
                   ltfs: dict[str, Any] | None = None) -> Target:
        self.counter += 1
        folder = self.folder / f"run{self.counter:04d}"
        folder.mkdir(parents=True)
        catalog: dict[str, Any] = {"catalog_backend": backend, "catalog_path": str(folder / "catalog" / "catalog.sqlite")}
        if dsn:
            catalog["catalog_dsn"] = dsn
        volume = volume_path or folder / "volume"
        volume.mkdir(parents=True, exist_ok=True)
        return Target(folder=folder, catalog=catalog, volume_path=volume, lock_dir=folder / "lock",
                      log_path=folder / "log" / "archive.log", ltfs=ltfs)

    def config(self, target: Target, through_proxy: bool = True, lock_timeout: float = 60.0,
               connection: dict[str, Any] | None = None) -> dict[str, Any]:
        url = self.proxy.url if through_proxy else self.orthanc.url
        return {
            "server_name": SERVER,
            "connection": {"url": url, "username": USERNAME, "password": self.password, **CONNECTION_DEFAULTS,
                           **(connection or {})},
            "catalog": target.catalog,
            "volume": target.volume_args(lock_timeout),
            "policy": {"before_date": "2011-01-01", "only_stable": False, "max_studies": 100},
            "log_path": str(target.log_path),
            "ltfs": target.ltfs,
            "required_copies": target.required_copies,
        }

    def start_driver(self, target: Target, kill: str | None = None, counts_path: Path | None = None,
                     **config_options: Any) -> subprocess.Popen[str]:
        config_path = target.folder / f"driver-{secrets.token_hex(3)}.json"
        config_path.write_text(json.dumps(self.config(target, **config_options)))
        os.chmod(config_path, 0o600)
        env = dict(self.base_env)
        env.pop("FAULT_KILL", None)
        if kill:
            env["FAULT_KILL"] = kill
        if target.ltfs:
            env.update(target.ltfs["env"])
        if counts_path:
            env["FAULT_COUNTS"] = str(counts_path)
        return subprocess.Popen([sys.executable, str(DRIVER), str(config_path)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def run_driver(self, target: Target, timeout: float = 300, **options: Any) -> RunResult:
        started = time.monotonic()
        process = self.start_driver(target, **options)
        self.proxy.on_kill = lambda: process.kill()
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
            stderr += f"\ndriver timed out after {timeout} s and was killed"
        return RunResult(process.returncode, parse_steps(stdout), stderr, time.monotonic() - started)

    # -- invariant ------------------------------------------------------------------------------

    def locate(self, target: Target) -> invariant.ContainerLocator:
        """Return a function that finds a container on the volume, or on tape as of its last index."""

        def on_folder(serial: str, path: str) -> str | None:
            return str(target.volume_path / path)

        if target.ltfs is None:
            return on_folder

        from tests.tapesim import library as tapesim_library

        def on_tape(serial: str, path: str) -> str | None:
            barcode = target.ltfs["barcodes"].get(serial)
            if barcode is None:
                return None
            try:
                return str(tapesim_library.stored_file_path(Path(target.ltfs["state"]), barcode, path))
            except (FileNotFoundError, ValueError):
                return None

        return on_tape

    def lost(self, target: Target) -> dict[str, str]:
        return invariant.check(self.originals, self.orthanc.url, self.auth, target.catalog, SERVER,
                               self.locate(target), target.required_copies)

    def unfinished(self, target: Target) -> list[str]:
        """Return what a finished job contradicts: old studies still in Orthanc, or the recent one touched."""
        problems = []
        for study_id in self.old_study_ids:
            if invariant.orthanc_instances(self.orthanc.url, self.auth, study_id):
                problems.append(f"old study {study_id} is still in Orthanc")
        recent = invariant.orthanc_instances(self.orthanc.url, self.auth, self.recent_study_id)
        if recent != self.originals.studies[self.recent_study_id]:
            problems.append(f"recent study {self.recent_study_id} was changed")
        return problems

    def finish(self, target: Target, outcome: Outcome, max_runs: int = 3,
               before_each: Callable[[], None] | None = None) -> None:
        """Run the clean pipeline until the job is done (at most max_runs), checking the invariant after each."""
        self.proxy.reset()
        for _ in range(max_runs):
            if before_each:
                before_each()
            result = self.run_driver(target)
            outcome.reruns += 1
            lost = self.lost(target)
            outcome.lost_after_rerun.update(lost)
            outcome.unfinished = self.unfinished(target)
            if not outcome.unfinished and result.returncode == 0:
                return
            if result.returncode != 0:
                outcome.messages.append(first_failure(result))


def parse_steps(stdout: str) -> dict[str, dict[str, Any]]:
    steps = {}
    for line in stdout.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            steps[record["step"]] = record["result"]
    return steps


def first_failure(result: RunResult) -> str:
    """Return the message of the first failed step, or the tail of stderr."""
    for name, step in result.steps.items():
        if step.get("failed"):
            return f"{name}: {step.get('msg', '')}"
        for entry in step.get("results", []) or []:
            if entry.get("status") == "failed":
                return f"{name}: study {entry.get('orthanc_id')}: {entry.get('reason')}"
    if result.killed:
        return "killed"
    return (result.stderr.strip().splitlines() or ["exit status %d" % result.returncode])[-1]


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)
