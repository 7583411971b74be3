"""Benchmark the study export against tar of Orthanc's storage files and Orthanc's own ZIP archive.

    /work/venv/bin/python bench/run.py            # full run, about 15 to 25 minutes on 2 cores
    /work/venv/bin/python bench/run.py --quick    # small smoke run, under a minute

Everything runs against a private Orthanc started by tools/orthanc_local.py in a work folder (a new
temporary folder unless --work-dir is given), and every output goes to a target folder on the
same disk. For each data set it measures, one after the other on the same studies:

  a  GNU tar of the storage files Orthanc holds for the studies, then fsync (the physical limit),
  b  GET /studies/{id}/archive streamed to a file with its SHA-256, then fsync (a hand-written script),
  c  StudyExporter with its checks and read-back verification (this project).

Passes b and c run in a subprocess (bench/worker.py), so their peak RSS and CPU time are their own.
Throughput is the size of the studies' DICOM files divided by the wall time, in MB/s (10^6 bytes).
The report goes to standard output as Markdown, and the raw figures to WORK/results.json.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.worker import use_project_module_utils  # noqa: E402
from tools import demo_data  # noqa: E402
from tools.orthanc_local import LocalOrthanc  # noqa: E402

use_project_module_utils()
from ansible.module_utils.orthanc_client import OrthancClient  # noqa: E402
from ansible.module_utils.retention_policy import POLICY_ARGUMENT_SPEC, Policy, Selector  # noqa: E402
from ansible.module_utils.study_export import EXPORT_ARGUMENT_SPEC  # noqa: E402

MB = 1_000_000
MIB = 1024 * 1024
WORKER = REPO / "bench" / "worker.py"

# Sizes of the data sets. CT-like instances are 512x512 16-bit (about 525 kB each), so 8200 of
# them make a study of about 4.3 GB (4.0 GiB).
FULL = {
    "ct_instances": [200, 400, 800],
    "radiography": {"studies": 6, "instances": 3, "rows": 3000, "columns": 2500},
    "tiny_studies": 300,
    "big_instances": 8200,
    "sweep_connections": [1, 2, 4, 8],
    "sweep_buffers": [16 * MIB, 64 * MIB, 256 * MIB],
    "sweep_repeats": 2,
    "selection_sizes": [2000, 20000],
    "selection_batches": [100, 1000],
}
QUICK = {
    "ct_instances": [20, 40],
    "radiography": {"studies": 2, "instances": 2, "rows": 1024, "columns": 1024},
    "tiny_studies": 10,
    "big_instances": 60,
    "sweep_connections": [1, 4],
    "sweep_buffers": [16 * MIB],
    "sweep_repeats": 1,
    "selection_sizes": [50, 200],
    "selection_batches": [10, 50],
}

# Pixel data of generated instances repeats every PIXEL_VARIANTS instances, so generating a 4 GB
# study costs seconds, not minutes. Sizes, tags and UIDs stay those of distinct instances, and the
# ZIP's deflate window (32 KiB) never spans two instances, so no measured pass gains from the repeat.
PIXEL_VARIANTS = 32
demo_data.make_pixel_data = functools.lru_cache(maxsize=2 * PIXEL_VARIANTS)(demo_data.make_pixel_data)


# -- machine and process figures ---------------------------------------------------------------

def load_average() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def machine_facts(work: Path, orthanc_version: str, load_before: str) -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split()
    memory_kib = int(meminfo[meminfo.index("MemTotal:") + 1])
    device = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "--target", str(work)],
                            capture_output=True, text=True).stdout.strip()
    rotational = Path(f"/sys/block/{Path(device).name}/queue/rotational")
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "disk": device,
        "disk_rotational": rotational.read_text().strip() == "1" if rotational.exists() else None,
        "kernel": platform.release(),
        "load_average_before_run": load_before,
        "python": platform.python_version(),
        "orthanc": orthanc_version,
    }


def drop_caches() -> bool:
    """Write dirty pages and drop the page cache. Return False when this process lacks the permission."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def process_cpu_seconds(pid: int) -> float:
    """Return user plus system CPU seconds of a process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- data -------------------------------------------------------------------------------------

def generated_files(study: demo_data.GeneratedStudy) -> Iterator[bytes]:
    for index in range(study.n_instances):
        dataset = study.build_dataset(index, pixel_seed=demo_data.derive_seed("bench", study.seed, index % PIXEL_VARIANTS))
        yield demo_data.encode_dataset(dataset)


def upload(uploader: demo_data.Uploader, files: Iterator[bytes]) -> set[str]:
    """Upload files and return the Orthanc IDs of their studies. Raise RuntimeError if Orthanc rejects one."""
    study_ids = set()
    for result in uploader.upload_many(files):
        if not result.accepted:
            raise RuntimeError(f"Orthanc rejected a generated instance: {result.error}")
        study_ids.add(result.study_id)
    return study_ids


def load_export_sets(url: str, sizes: dict[str, Any]) -> dict[str, list[str]]:
    """Upload the CT-like, radiography-like, tiny and big studies and return the study IDs of each set."""
    sets: dict[str, list[str]] = {}
    with demo_data.Uploader(url, threads=4) as uploader:
        ct = []
        for number, count in enumerate(sizes["ct_instances"]):
            study = demo_data.generate_study("ct", n_instances=count, study_date="20050301", seed=1000 + number)
            ct.extend(upload(uploader, generated_files(study)))
        sets["ct"] = ct

        radiography = sizes["radiography"]
        ids: list[str] = []
        for number in range(radiography["studies"]):
            study = demo_data.generate_study("dx", n_instances=radiography["instances"], study_date="20060401",
                                             seed=2000 + number, rows=radiography["rows"],
                                             columns=radiography["columns"])
            ids.extend(upload(uploader, generated_files(study)))
        sets["radiography"] = ids

        ids = []
        for number in range(sizes["tiny_studies"]):
            study = demo_data.generate_study("tiny", n_instances=1, study_date="20070501", seed=3000 + number)
            ids.extend(upload(uploader, generated_files(study)))
        sets["tiny"] = ids

        study = demo_data.generate_study("ct", n_instances=sizes["big_instances"], study_date="20080601", seed=4000)
        sets["big"] = sorted(upload(uploader, generated_files(study)))
    return sets


def tiny_study_files(first: int, count: int, dates: list[str], patients: list[demo_data.Patient]) -> Iterator[bytes]:
    for number in range(first, first + count):
        study = demo_data.generate_study("tiny", n_instances=1, study_date=dates[number], seed=100_000 + number,
                                         patient=patients[number % len(patients)])
        yield study.build_file(0)


# -- passes -----------------------------------------------------------------------------------

class Bench:
    def __init__(self, server: LocalOrthanc, work: Path, drop: bool):
        self.server = server
        self.url = server.url
        self.work = work
        self.target = work / "target"
        self.drop = drop
        self.client = OrthancClient(self.url)
        self.orthanc_pid = server.pid

    def study_files(self, study_id: str) -> tuple[list[str], int]:
        """Return the storage paths (relative to StorageDirectory) and total size of a study's DICOM files."""
        paths = []
        total = 0
        for item in self.client.study_instances(study_id):
            uuid = item.get("FileUuid") or self.client.instance_attachment_info(item["ID"])["Uuid"]
            relative = f"{uuid[0:2]}/{uuid[2:4]}/{uuid}"
            if not (self.server.storage_dir / relative).is_file():
                raise RuntimeError(f"storage file {relative} of instance {item['ID']} not found: "
                                   "the benchmark needs plain storage without StorageCompression")
            paths.append(relative)
            total += int(item["FileSize"])
        return paths, total

    def fresh_target(self) -> Path:
        shutil.rmtree(self.target, ignore_errors=True)
        self.target.mkdir(parents=True)
        return self.target

    def measured(self, run: Any) -> dict[str, Any]:
        """Drop caches, then run one pass and add its wall time and Orthanc's CPU seconds."""
        if self.drop:
            drop_caches()
        orthanc_before = process_cpu_seconds(self.orthanc_pid)
        started = time.monotonic()
        figures = run()
        figures.setdefault("seconds", time.monotonic() - started)
        figures["orthanc_cpu_seconds"] = process_cpu_seconds(self.orthanc_pid) - orthanc_before
        return figures

    def tar_pass(self, study_ids: list[str], files: dict[str, list[str]]) -> dict[str, Any]:
        target = self.fresh_target()

        def run() -> dict[str, Any]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            per_study = []
            for study_id in study_ids:
                started = time.monotonic()
                listing = self.work / "tar-files.txt"
                listing.write_text("\n".join(files[study_id]) + "\n")
                output = target / f"{study_id}.tar"
                subprocess.run(["tar", "--create", "--blocking-factor=2048", "--file", str(output),
                                "--directory", str(self.server.storage_dir), "--files-from", str(listing)],
                               check=True)
                descriptor = os.open(output, os.O_RDONLY)
                os.fsync(descriptor)
                os.close(descriptor)
                per_study.append({"study": study_id, "seconds": time.monotonic() - started})
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            return {"studies": per_study,
                    "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}

        return self.measured(run)

    def worker_pass(self, arguments: list[str]) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            output = subprocess.run([sys.executable, str(WORKER), *arguments], check=True, capture_output=True,
                                    text=True)
            return json.loads(output.stdout)

        return self.measured(run)

    def archive_pass(self, study_ids: list[str]) -> dict[str, Any]:
        target = self.fresh_target()
        return self.worker_pass(["archive", "--url", self.url, "--target", str(target), *study_ids])

    def export_pass(self, study_ids: list[str], connections: int, buffer_bytes: int) -> dict[str, Any]:
        target = self.fresh_target()
        volume = target / "volume"
        volume.mkdir()
        return self.worker_pass(["export", "--url", self.url, "--catalog", str(target / "catalog.sqlite"),
                                 "--volume", str(volume), "--connections", str(connections),
                                 "--buffer-bytes", str(buffer_bytes), *study_ids])


def summarize(figures: dict[str, Any], study_bytes: int) -> dict[str, Any]:
    gigabytes = study_bytes / 1e9
    summary = {
        "seconds": round(figures["seconds"], 3),
        "mb_per_s": round(study_bytes / MB / figures["seconds"], 1),
        "cpu_s_per_gb": round(figures["cpu_seconds"] / gigabytes, 2),
        "orthanc_cpu_s_per_gb": round(figures["orthanc_cpu_seconds"] / gigabytes, 2),
    }
    if "peak_rss_bytes" in figures:
        summary["peak_rss_mb"] = round(figures["peak_rss_bytes"] / MB, 1)
    return summary


def measure_set(bench: Bench, name: str, study_ids: list[str], connections: int, buffer_bytes: int,
                with_archive: bool) -> dict[str, Any]:
    files = {}
    study_bytes = {}
    for study_id in study_ids:
        files[study_id], study_bytes[study_id] = bench.study_files(study_id)
    total = sum(study_bytes.values())
    print(f"# {name}: {len(study_ids)} studies, {total / MB:.0f} MB", file=sys.stderr, flush=True)

    result: dict[str, Any] = {"studies": len(study_ids), "instances": sum(len(value) for value in files.values()),
                              "study_bytes": total}
    tar = bench.tar_pass(study_ids, files)
    result["a"] = summarize(tar, total)
    if with_archive:
        archive = bench.archive_pass(study_ids)
        result["b"] = summarize(archive, total)
        result["b"]["zip_bytes"] = archive["zip_bytes"]
    export = bench.export_pass(study_ids, connections, buffer_bytes)
    result["c"] = summarize(export, total)
    result["c"]["container_bytes"] = export["container_bytes"]
    result["c_over_a"] = round(result["c"]["mb_per_s"] / result["a"]["mb_per_s"], 2)
    if with_archive:
        result["c_over_b"] = round(result["c"]["mb_per_s"] / result["b"]["mb_per_s"], 1)

    # Per-study throughput of the export, to show whether it falls as studies grow.
    result["per_study"] = [
        {"instances": len(files[item["study"]]), "study_bytes": study_bytes[item["study"]],
         "c_mb_per_s": round(study_bytes[item["study"]] / MB / item["seconds"], 1),
         "a_mb_per_s": round(study_bytes[item["study"]] / MB / tar_item["seconds"], 1),
         "c_over_a": round(tar_item["seconds"] / item["seconds"], 2),
         "c_write_mb_per_s": round(study_bytes[item["study"]] / MB / (item["seconds"] - item["read_back_seconds"]), 1),
         "c_read_back_mb_per_s": round(item["container_bytes"] / MB / item["read_back_seconds"], 1)}
        for item, tar_item in zip(export["studies"], tar["studies"])
    ]
    shutil.rmtree(bench.target, ignore_errors=True)
    return result


def sweep(bench: Bench, study_ids: list[str], sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """Export the same studies with each number of connections and buffer size; keep the best of the repeats."""
    total = sum(bench.study_files(study_id)[1] for study_id in study_ids)
    rows = []
    for connections in sizes["sweep_connections"]:
        for buffer_bytes in sizes["sweep_buffers"]:
            runs = [bench.export_pass(study_ids, connections, buffer_bytes) for _ in range(sizes["sweep_repeats"])]
            best = min(runs, key=lambda figures: figures["seconds"])
            row = {"connections": connections, "buffer_mib": buffer_bytes // MIB, **summarize(best, total)}
            print(f"# sweep {row}", file=sys.stderr, flush=True)
            rows.append(row)
    shutil.rmtree(bench.target, ignore_errors=True)
    return rows


# -- selection --------------------------------------------------------------------------------

def wait_until_stable(client: OrthancClient, count: int, timeout: float = 120.0) -> None:
    """Wait until Orthanc reports count studies and none of them is still unstable (StableAge 1 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        studies = list(client.list_studies(page_size=5000))
        if len(studies) >= count and all(study.get("IsStable") for study in studies):
            return
        time.sleep(1)
    raise RuntimeError(f"the {count} uploaded studies did not all become stable within {timeout:.0f} s")


def measure_selection(work: Path, sizes: dict[str, Any]) -> list[dict[str, Any]]:
    """Load tiny studies into a second Orthanc in steps and time choosing the first batch at each size."""
    rows = []
    total = sizes["selection_sizes"][-1]
    dates = demo_data.study_dates(total, seed=5, year_from=1998, year_to=2020)
    patients = [demo_data.Patient.fake(seed) for seed in range(max(1, total // 10))]
    defaults = {name: spec.get("default") for name, spec in POLICY_ARGUMENT_SPEC.items()}
    with LocalOrthanc(work / "orthanc-selection", stable_age=1) as server:
        loaded = 0
        client = OrthancClient(server.url)
        for size in sizes["selection_sizes"]:
            started = time.monotonic()
            with demo_data.Uploader(server.url, threads=4) as uploader:
                upload(uploader, tiny_study_files(loaded, size - loaded, dates, patients))
            print(f"# selection: loaded {size} studies in {time.monotonic() - started:.0f} s",
                  file=sys.stderr, flush=True)
            loaded = size
            wait_until_stable(client, size)
            for batch in sizes["selection_batches"]:
                policy = Policy(dict(defaults, older_than_days=365, max_studies=batch))
                requests_sent = 0
                finds_sent = 0
                original = client.request

                def counting(*args: Any, **kwargs: Any) -> Any:
                    nonlocal requests_sent, finds_sent
                    requests_sent += 1
                    finds_sent += args[1] == "/tools/find"
                    return original(*args, **kwargs)

                client.request = counting  # type: ignore[method-assign]
                orthanc_before = process_cpu_seconds(server.pid)
                started = time.monotonic()
                selected = Selector(client, policy).select()
                seconds = time.monotonic() - started
                client.request = original  # type: ignore[method-assign]
                if len(selected) != batch:
                    raise RuntimeError(f"selection returned {len(selected)} studies, expected {batch}")
                rows.append({"server_studies": size, "batch": batch, "seconds": round(seconds, 2),
                             "requests": requests_sent, "finds": finds_sent,
                             "orthanc_cpu_seconds": round(process_cpu_seconds(server.pid) - orthanc_before, 2)})
                print(f"# selection {rows[-1]}", file=sys.stderr, flush=True)
        client.close()
    return rows


# -- report -----------------------------------------------------------------------------------

def check_targets(results: dict[str, Any]) -> list[tuple[str, bool, str]]:
    ct = results["sets"]["ct"]
    big = results["sets"]["big"]
    scaling = results["sets"]["ct"]["per_study"] + big["per_study"]
    smallest, largest = scaling[0], scaling[-1]
    return [
        ("CT-like set: c/a >= 0.8", ct["c_over_a"] >= 0.8, f"{ct['c_over_a']}"),
        ("CT-like set: c/b >= 5", ct["c_over_b"] >= 5, f"{ct['c_over_b']}"),
        ("peak RSS of c under 150 MB for the big study", big["c"]["peak_rss_mb"] < 150,
         f"{big['c']['peak_rss_mb']} MB for {big['study_bytes'] / 1e9:.2f} GB"),
        ("throughput does not fall as studies grow (largest >= 90% of smallest)",
         largest["c_mb_per_s"] >= 0.9 * smallest["c_mb_per_s"],
         f"{smallest['c_mb_per_s']} MB/s at {smallest['instances']} instances, "
         f"{largest['c_mb_per_s']} MB/s at {largest['instances']} instances"),
    ]


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Run {machine['date']}, command `{results['command']}`, {results['elapsed_minutes']} minutes.",
        "",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gib']} GiB memory, "
        f"disk {machine['disk']} ({'rotational' if machine['disk_rotational'] else 'non-rotational'} "
        "as the kernel reports it), kernel " + machine["kernel"],
        f"- Orthanc {machine['orthanc']}, Python {machine['python']}",
        f"- Load average (1 min) before the run {machine['load_average_before_run']}, at its end "
        f"{results['load_average_at_end']} (the benchmark's own Orthanc servers and uploads count in it)",
        "- Page cache: " + ("dropped before every pass (`echo 3 > /proc/sys/vm/drop_caches`), so each pass "
                            "reads Orthanc's storage from disk" if results["caches_dropped"] else
                            "NOT dropped (no permission): caches are warm for all three passes"),
        f"- Export settings for c: connections {results['connections']}, buffer "
        f"{results['buffer_bytes'] // MIB} MiB",
        "",
        "## Three-way comparison",
        "",
        "| set | studies | instances | GB | a tar MB/s | b archive MB/s | c export MB/s | c/a | c/b "
        "| c peak RSS MB | CPU s/GB a | CPU s/GB b (client + Orthanc) | CPU s/GB c (client + Orthanc) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    for name, item in results["sets"].items():
        b = item.get("b")
        archive_cpu = f"{b['cpu_s_per_gb']} + {b['orthanc_cpu_s_per_gb']}" if b else "-"
        lines.append(
            f"| {name} | {item['studies']} | {item['instances']} | {item['study_bytes'] / 1e9:.2f} "
            f"| {item['a']['mb_per_s']} | {b['mb_per_s'] if b else 'not run'} | {item['c']['mb_per_s']} "
            f"| {item['c_over_a']} | {item.get('c_over_b', '-')} | {item['c']['peak_rss_mb']} "
            f"| {item['a']['cpu_s_per_gb']} "
            f"| {archive_cpu} "
            f"| {item['c']['cpu_s_per_gb']} + {item['c']['orthanc_cpu_s_per_gb']} |"
        )
    lines += ["", "## Export throughput by study size", "",
              "| instances | GB | a tar MB/s | c export MB/s | c/a | c without its read-back MB/s "
              "| c read-back MB/s |", "|---|---|---|---|---|---|---|"]
    for item in results["sets"]["ct"]["per_study"] + results["sets"]["big"]["per_study"]:
        lines.append(f"| {item['instances']} | {item['study_bytes'] / 1e9:.2f} | {item['a_mb_per_s']} "
                     f"| {item['c_mb_per_s']} | {item['c_over_a']} | {item['c_write_mb_per_s']} "
                     f"| {item['c_read_back_mb_per_s']} |")
    lines += ["", f"## Connections and buffer sweep ({results['sweep_study_instances']} CT-like instances, "
              "best of the repeats)", "",
              "| connections | buffer MiB | MB/s | peak RSS MB | CPU s/GB |", "|---|---|---|---|---|"]
    for row in results["sweep"]:
        lines.append(f"| {row['connections']} | {row['buffer_mib']} | {row['mb_per_s']} | {row['peak_rss_mb']} "
                     f"| {row['cpu_s_per_gb']} |")
    lines += ["", "## Selection of the first batch (retention_policy.Selector, tiny studies dated 1998 to 2020, "
              "older_than_days 365)", "",
              "| studies in Orthanc | batch | seconds | HTTP requests | of which /tools/find | Orthanc CPU s |",
              "|---|---|---|---|---|---|"]
    for row in results["selection"]:
        lines.append(f"| {row['server_studies']} | {row['batch']} | {row['seconds']} | {row['requests']} "
                     f"| {row['finds']} | {row['orthanc_cpu_seconds']} |")

    lines += ["", "## Targets", ""]
    for text, met, value in results["targets"]:
        lines.append(f"- {'met' if met else 'MISSED'}: {text}: {value}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="Benchmark the study export against tar and Orthanc's archive.")
    parser.add_argument("--quick", action="store_true", help="small data sets, for a smoke test")
    parser.add_argument("--work-dir", type=Path,
                        help="folder for Orthanc's storage and the outputs (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder instead of deleting it")
    parser.add_argument("--no-selection", action="store_true", help="skip the selection measurement")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL

    started = time.monotonic()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="orthanc-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    connections = EXPORT_ARGUMENT_SPEC["connections"]["default"]
    buffer_bytes = EXPORT_ARGUMENT_SPEC["buffer_bytes"]["default"]
    load_before = load_average()
    caches_dropped = drop_caches()
    try:
        with LocalOrthanc(work / "orthanc", stable_age=1) as server:
            version = server.system()["Version"]
            load_started = time.monotonic()
            sets = load_export_sets(server.url, sizes)
            print(f"# loaded export data sets in {time.monotonic() - load_started:.0f} s", file=sys.stderr,
                  flush=True)
            bench = Bench(server, work, caches_dropped)
            results: dict[str, Any] = {
                "command": " ".join(["bench/run.py", *sys.argv[1:]]),
                "machine": machine_facts(work, version, load_before),
                "caches_dropped": caches_dropped,
                "connections": connections,
                "buffer_bytes": buffer_bytes,
                "sets": {},
            }
            for name in ("ct", "radiography", "tiny", "big"):
                results["sets"][name] = measure_set(bench, name, sets[name], connections, buffer_bytes,
                                                    with_archive=name != "big")
            sweep_study = sets["ct"][len(sets["ct"]) // 2]
            results["sweep_study_instances"] = len(bench.study_files(sweep_study)[0])
            results["sweep"] = sweep(bench, [sweep_study], sizes)
        results["selection"] = [] if args.no_selection else measure_selection(work, sizes)
        results["targets"] = check_targets(results)
        results["load_average_at_end"] = load_average()
        results["elapsed_minutes"] = round((time.monotonic() - started) / 60, 1)
        (work / "results.json").write_text(json.dumps(results, indent=1) + "\n")
        sys.stdout.write(markdown(results))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
