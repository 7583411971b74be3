"""Generate DICOM test studies and upload them to an Orthanc server.

Three kinds of data, each reported under its own key in the load summary:

* "testdata": the real DICOM files shipped in the pydicom wheel. Orthanc rejects
  some of them, and several lack StudyDate and other main DICOM tags.
* "generated": pydicom-built DICOM Part 10 studies (CT, MR, CR, DX, US, MG and
  tiny one-instance studies) of fake patients, with StudyDate spread over years.
* "hostile": tiny studies with odd values: missing, empty, malformed or future
  StudyDate; "../", "/", "\\", control characters, over-long and non-ASCII text.

Everything is derived from the seed: the same seed gives the same UIDs, pixel
data and therefore the same Orthanc IDs. Patient names are fake and are never
printed.

Command line::

    python tools/demo_data.py load --url http://127.0.0.1:8042 --seed 1 --studies 24

Benchmarks call generate_study() and Uploader directly, for example::

    study = generate_study("ct", n_instances=400, study_date="20150301", seed=7)
    with Uploader(url, auth=("user", "password"), threads=4) as uploader:
        results = uploader.upload_many(study.iter_files())
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import json
import logging
import random
import sys
import time
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import pydicom
import pydicom.config
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

LOG = logging.getLogger("demo_data")

# Every UID is generate_uid(prefix=pydicom's root, entropy_srcs=[UID_NAMESPACE, ...]),
# which hashes the sources, so the same seed always gives the same UIDs.
UID_NAMESPACE = "orthanc-archive-demo-data"

DEFAULT_SEED = 0
DEFAULT_STUDIES = 24
DEFAULT_YEAR_FROM = 1998
DEFAULT_THREADS = 4
UPLOAD_TIMEOUT = 300.0
STORE_RETRIES = 3

# Files in pydicom's test data that are not DICOM at all (JSON, dumps, ICC profiles, archives).
NOT_DICOM_SUFFIXES = (".json", ".txt", ".dump", ".icc", ".gz", ".py")
NOT_DICOM_NAMES = ("README",)


# Study shapes


@dataclass(frozen=True)
class Shape:
    """Image geometry and layout of one kind of generated study."""

    name: str
    modality: str
    sop_class_uid: str
    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    instances: tuple[int, int]
    """Default range of instance counts, both ends included."""
    series_per_instance: bool
    """True for radiography: one series per view, as CR/DX/MG devices send them."""
    descriptions: tuple[str, ...]
    body_parts: tuple[str, ...]


SHAPES: dict[str, Shape] = {
    shape.name: shape
    for shape in (
        Shape("ct", "CT", CTImageStorage, 512, 512, 16, 12, (20, 60), False,
              ("CT CHEST", "CT ABDOMEN PELVIS", "CT HEAD WITHOUT CONTRAST"), ("CHEST", "ABDOMEN", "HEAD")),
        Shape("mr", "MR", MRImageStorage, 256, 256, 16, 12, (12, 30), False,
              ("MR BRAIN", "MR KNEE LEFT", "MR LUMBAR SPINE"), ("BRAIN", "KNEE", "LSPINE")),
        Shape("cr", "CR", ComputedRadiographyImageStorage, 1024, 1024, 16, 12, (1, 4), True,
              ("XR CHEST PA LAT", "XR HAND RIGHT"), ("CHEST", "HAND")),
        Shape("dx", "DX", DigitalXRayImageStorageForPresentation, 1024, 1024, 16, 12, (1, 4), True,
              ("DX CHEST", "DX PELVIS"), ("CHEST", "PELVIS")),
        Shape("us", "US", UltrasoundImageStorage, 480, 640, 8, 8, (3, 8), False,
              ("US ABDOMEN", "US THYROID"), ("ABDOMEN", "NECK")),
        Shape("mg", "MG", DigitalMammographyXRayImageStorageForPresentation, 1024, 768, 16, 12, (2, 4), True,
              ("MG SCREENING BILATERAL",), ("BREAST",)),
        Shape("tiny", "OT", SecondaryCaptureImageStorage, 64, 64, 8, 8, (1, 1), False,
              ("SCREEN CAPTURE", "KEY IMAGE"), ("",)),
    )
}

# Shape of generated study number i in load_demo(): SHAPE_CYCLE[i % len(SHAPE_CYCLE)].
SHAPE_CYCLE = ("ct", "tiny", "mr", "cr", "tiny", "dx", "us", "tiny", "mg", "tiny")

GIVEN_NAMES = ("Ada", "Bo", "Cyd", "Dee", "Eli", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kit", "Lou")
FAMILY_NAMES = ("Oak", "Elm", "Ash", "Fir", "Yew", "Pine", "Lime", "Teak")


# Deterministic helpers


def derive_seed(*parts: object) -> int:
    """Return a 64-bit seed derived from parts, stable across runs and Python versions."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def derive_uid(*parts: object) -> str:
    """Return a UID under pydicom's root that depends only on parts."""
    return str(generate_uid(entropy_srcs=[UID_NAMESPACE, *(str(part) for part in parts)]))


@dataclass(frozen=True)
class Patient:
    """A fake patient whose name starts with "Demo", so it cannot pass for a real one."""

    patient_id: str
    name: str
    birth_date: str
    sex: str

    @classmethod
    def fake(cls, seed: int) -> Patient:
        rng = random.Random(derive_seed("patient", seed))
        family = rng.choice(FAMILY_NAMES)
        given = rng.choice(GIVEN_NAMES)
        birth = datetime.date(rng.randint(1925, 1995), rng.randint(1, 12), rng.randint(1, 28))
        return cls(
            patient_id=f"DEMO{derive_seed('patient-id', seed) % 10**8:08d}",
            name=f"Demo{family}^{given}",
            birth_date=birth.strftime("%Y%m%d"),
            sex=rng.choice("MFO"),
        )


# Pixel data


@lru_cache(maxsize=16)
def _gradient(rows: int, columns: int, bits_allocated: int, noise_bits: int) -> tuple[int, int]:
    """Return (gradient, noise mask) as little-endian integers over all pixels.

    The gradient leaves noise_bits of headroom per pixel, so adding masked noise
    never carries into the next pixel.
    """
    bytes_per_pixel = bits_allocated // 8
    top = (1 << (12 if bits_allocated == 16 else 8)) - (1 << noise_bits)
    row = bytearray()
    for x in range(columns):
        row += (x * top // max(columns - 1, 1) // 2).to_bytes(bytes_per_pixel, "little")
    image = bytearray()
    for y in range(rows):
        offset = y * top // max(rows - 1, 1) // 2
        shifted = int.from_bytes(row, "little") + offset * int.from_bytes(
            (1).to_bytes(bytes_per_pixel, "little") * columns, "little"
        )
        image += shifted.to_bytes(len(row), "little")
    lane_mask = ((1 << noise_bits) - 1).to_bytes(bytes_per_pixel, "little")
    return int.from_bytes(image, "little"), int.from_bytes(lane_mask * rows * columns, "little")


def make_pixel_data(rows: int, columns: int, bits_allocated: int, seed: int) -> bytes:
    """Return a diagonal gradient plus seeded noise in the low bits, so every instance differs."""
    noise_bits = 6 if bits_allocated == 16 else 4
    gradient, mask = _gradient(rows, columns, bits_allocated, noise_bits)
    size = rows * columns * bits_allocated // 8
    noise = int.from_bytes(random.Random(seed).randbytes(size), "little") & mask
    return (gradient + noise).to_bytes(size, "little")


# Datasets


@contextmanager
def lenient_writing() -> Iterator[None]:
    """Let pydicom write values that break their VR's rules, as the hostile studies need."""
    settings = pydicom.config.settings
    previous = (settings.reading_validation_mode, settings.writing_validation_mode)
    settings.reading_validation_mode = pydicom.config.IGNORE
    settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = previous


def encode_dataset(dataset: Dataset) -> bytes:
    """Return dataset as a DICOM Part 10 file (preamble, DICM, file meta, Explicit VR Little Endian)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


# Tags that a hostile case may set to None to remove them.
Overrides = Mapping[str, Any]


@dataclass
class GeneratedStudy:
    """One generated study. Instances are built on demand by iter_files(), so large studies stay out of memory."""

    shape: Shape
    seed: int
    study_instance_uid: str
    study_date: str | None
    patient: Patient
    accession_number: str
    study_description: str
    body_part: str
    series_instance_uids: list[str]
    n_instances: int
    rows: int
    columns: int
    overrides: dict[str, Any] = field(default_factory=dict)
    """Keyword -> value applied last to every instance; None removes the element."""
    character_set: str = "ISO_IR 100"

    @property
    def modality(self) -> str:
        return self.shape.modality

    def series_of(self, instance_index: int) -> int:
        """Return the index of the series that instance_index belongs to."""
        if self.shape.series_per_instance:
            return instance_index % len(self.series_instance_uids)
        per_series = -(-self.n_instances // len(self.series_instance_uids))
        return instance_index // per_series

    def sop_instance_uid(self, instance_index: int) -> str:
        return derive_uid("instance", self.shape.name, self.seed, instance_index)

    def build_dataset(self, instance_index: int, *, series_instance_uid: str | None = None,
                      sop_instance_uid: str | None = None, pixel_seed: int | None = None) -> Dataset:
        """Build instance instance_index as a pydicom Dataset with file meta information."""
        shape = self.shape
        series_index = self.series_of(instance_index)
        series_uid = series_instance_uid or self.series_instance_uids[series_index]
        sop_uid = sop_instance_uid or self.sop_instance_uid(instance_index)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = shape.sop_class_uid
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = self.character_set
        ds.SOPClassUID = shape.sop_class_uid
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = self.study_instance_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = derive_uid("frame", self.shape.name, self.seed, series_index)

        ds.PatientID = self.patient.patient_id
        ds.PatientName = self.patient.name
        ds.PatientBirthDate = self.patient.birth_date
        ds.PatientSex = self.patient.sex

        if self.study_date is not None:
            ds.StudyDate = self.study_date
            ds.SeriesDate = self.study_date
            ds.ContentDate = self.study_date
        ds.StudyTime = f"{8 + self.seed % 10:02d}{self.seed % 60:02d}00"
        ds.SeriesTime = ds.StudyTime
        ds.AccessionNumber = self.accession_number
        ds.StudyID = str(self.seed % 10**6)
        ds.StudyDescription = self.study_description
        ds.ReferringPhysicianName = "Demo^Referrer"
        ds.InstitutionName = "Demo Hospital"

        ds.Modality = shape.modality
        ds.SeriesNumber = series_index + 1
        ds.SeriesDescription = f"{self.study_description} series {series_index + 1}"
        ds.BodyPartExamined = self.body_part
        ds.Manufacturer = "orthanc-archive demo_data"
        ds.InstanceNumber = instance_index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if shape.modality in ("CT", "MR") else ""]
        if shape.modality in ("CT", "MR"):
            ds.ImagePositionPatient = [0.0, 0.0, float(instance_index) * 2.5]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.SliceThickness = 2.5
            ds.PixelSpacing = [0.7, 0.7]
        if shape.modality == "CT":
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.KVP = 120

        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = self.rows
        ds.Columns = self.columns
        ds.BitsAllocated = shape.bits_allocated
        ds.BitsStored = shape.bits_stored
        ds.HighBit = shape.bits_stored - 1
        ds.PixelRepresentation = 0
        seed = pixel_seed if pixel_seed is not None else derive_seed("pixels", shape.name, self.seed, instance_index)
        ds.PixelData = make_pixel_data(self.rows, self.columns, shape.bits_allocated, seed)

        for keyword, value in self.overrides.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        return ds

    def build_file(self, instance_index: int) -> bytes:
        """Return instance instance_index as DICOM Part 10 bytes."""
        if self.overrides:
            with lenient_writing():
                return encode_dataset(self.build_dataset(instance_index))
        return encode_dataset(self.build_dataset(instance_index))

    def iter_files(self) -> Iterator[bytes]:
        """Yield the DICOM files of the study one at a time, in instance order."""
        for index in range(self.n_instances):
            yield self.build_file(index)

    def write_to(self, directory: str | Path) -> list[Path]:
        """Write the study as DIRECTORY/<StudyInstanceUID>/<n>.dcm; return the paths."""
        folder = Path(directory) / self.study_instance_uid
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, data in enumerate(self.iter_files()):
            path = folder / f"{index + 1:05d}.dcm"
            path.write_bytes(data)
            paths.append(path)
        return paths


def generate_study(
    shape: str = "ct",
    *,
    n_instances: int | None = None,
    study_date: str | datetime.date | None = "20100101",
    seed: int = DEFAULT_SEED,
    patient: Patient | None = None,
    rows: int | None = None,
    columns: int | None = None,
    n_series: int | None = None,
    overrides: Overrides | None = None,
    character_set: str = "ISO_IR 100",
) -> GeneratedStudy:
    """Describe a deterministic study of the given shape; no pixel data is built yet.

    shape is a key of SHAPES. n_instances defaults to a seeded count within the
    shape's range. study_date None leaves StudyDate out. rows and columns
    override the shape's image size (for example 2500 x 3000 radiographs in a
    benchmark). The same arguments always give the same UIDs and bytes.
    """
    try:
        spec = SHAPES[shape]
    except KeyError:
        raise ValueError(f"unknown study shape {shape!r}: expected one of {', '.join(SHAPES)}") from None

    rng = random.Random(derive_seed("study", shape, seed))
    if n_instances is None:
        n_instances = rng.randint(*spec.instances)
    if n_instances < 1:
        raise ValueError(f"n_instances must be at least 1, got {n_instances}")
    if isinstance(study_date, datetime.date):
        study_date = study_date.strftime("%Y%m%d")

    if n_series is None:
        if spec.series_per_instance:
            n_series = n_instances
        elif spec.modality in ("CT", "MR"):
            n_series = max(1, min(3, n_instances // 15))
        else:
            n_series = 1
    n_series = max(1, min(n_series, n_instances))

    description_index = rng.randrange(len(spec.descriptions))
    return GeneratedStudy(
        shape=spec,
        seed=seed,
        study_instance_uid=derive_uid("study", shape, seed),
        study_date=study_date,
        patient=patient or Patient.fake(seed),
        accession_number=f"A{derive_seed('accession', shape, seed) % 10**9:09d}",
        study_description=spec.descriptions[description_index],
        body_part=spec.body_parts[description_index % len(spec.body_parts)],
        series_instance_uids=[derive_uid("series", shape, seed, index) for index in range(n_series)],
        n_instances=n_instances,
        rows=rows or spec.rows,
        columns=columns or spec.columns,
        overrides=dict(overrides or {}),
        character_set=character_set,
    )


# Hostile and edge-case studies


@dataclass(frozen=True)
class HostileCase:
    """A tiny study whose tags break a rule that real archives meet in practice."""

    name: str
    overrides: Mapping[str, Any]
    character_set: str = "ISO_IR 100"


HOSTILE_CASES: tuple[HostileCase, ...] = (
    HostileCase("date_missing", {"StudyDate": None, "SeriesDate": None, "ContentDate": None}),
    HostileCase("date_empty", {"StudyDate": "", "SeriesDate": "", "ContentDate": ""}),
    HostileCase("date_malformed_dashes", {"StudyDate": "2019-13-45"}),
    HostileCase("date_letters", {"StudyDate": "abcd"}),
    HostileCase("date_february_30", {"StudyDate": "19990230"}),
    HostileCase("date_future", {"StudyDate": "20991231"}),
    HostileCase("patient_id_dot_dot", {"PatientID": "../../DEMO-TRAVERSAL"}),
    HostileCase("patient_id_slash", {"PatientID": "DEMO/SLASH/01"}),
    HostileCase("patient_id_backslash", {"PatientID": "DEMO\\BACKSLASH"}),
    HostileCase("accession_dot_dot", {"AccessionNumber": "../ACC/.."}),
    HostileCase("description_path", {"StudyDescription": "/etc/../..\\share\\CT ../../x"}),
    HostileCase("control_characters", {
        "PatientID": "DEMO\x01CTRL",
        "StudyDescription": "tab\there bell\x07 escape\x1b[31m newline\nend",
        "AccessionNumber": "ACC\x7f1",
    }),
    # NOTE: Orthanc 1.10.1 leaves values over 256 bytes out of MainDicomTags
    # (type "TooLong", ORTHANC_MAXIMUM_TAG_LENGTH), so StudyDescription is only in the file.
    HostileCase("long_values", {
        "PatientID": "DEMO" + "L" * 196,
        "StudyDescription": "LONG " * 800,
        "AccessionNumber": "A" * 100,
    }),
    HostileCase("non_ascii_japanese", {
        "PatientName": "試験^患者",
        "PatientID": "DEMO試験001",
        "StudyDescription": "胸部CT 検査",
    }, "ISO_IR 192"),
    HostileCase("non_ascii_greek", {
        "PatientName": "Δοκιμή^Ασθενής",
        "StudyDescription": "Θώρακας ακτινογραφία",
    }, "ISO_IR 192"),
)


def generate_hostile_studies(seed: int = DEFAULT_SEED) -> dict[str, GeneratedStudy]:
    """Return one tiny study per HOSTILE_CASES entry, keyed by case name."""
    studies = {}
    for index, case in enumerate(HOSTILE_CASES):
        study_seed = derive_seed("hostile", seed, case.name)
        studies[case.name] = generate_study(
            "tiny",
            n_instances=1,
            study_date=f"{2000 + index}0615",
            seed=study_seed,
            overrides=case.overrides,
            character_set=case.character_set,
        )
    return studies


# Upload


@dataclass(frozen=True)
class UploadResult:
    """Outcome of one POST /instances."""

    http_status: int
    status: str
    """Orthanc's "Status" ("Success", "AlreadyStored"), or "Rejected" on an HTTP error."""
    size: int
    instance_id: str | None = None
    study_id: str | None = None
    error: str | None = None

    @property
    def accepted(self) -> bool:
        return self.http_status == 200


class Uploader:
    """Upload DICOM files with POST /instances over a few keep-alive sessions, one per thread.

    upload_many() keeps at most twice as many files in memory as there are threads.
    """

    def __init__(self, url: str, *, auth: tuple[str, str] | None = None, threads: int = DEFAULT_THREADS,
                 timeout: float = UPLOAD_TIMEOUT) -> None:
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.url = url.rstrip("/")
        self.auth = auth
        self.threads = threads
        self.timeout = timeout
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="upload")

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.auth = self.auth
            session.headers["Content-Type"] = "application/dicom"
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def upload(self, data: bytes) -> UploadResult:
        """Send one DICOM file in the calling thread and return Orthanc's result.

        After an HTTP 5xx response the instance is sent again, up to STORE_RETRIES times. An HTTP
        error that remains becomes a rejected result. Connection errors are raised.
        """
        url = f"{self.url}/instances"
        try:
            response = self._session().post(url, data=data, timeout=self.timeout)
        except requests.ConnectionError as error:
            # NOTE: seen once under load: a reused keep-alive connection was closed by
            # Orthanc 1.10.1 before the request went out (cause not confirmed). Sending the
            # same instance again is safe because Orthanc then reports "AlreadyStored".
            LOG.warning("POST %s failed (%s), sending the instance once more", url, error)
            response = self._session().post(url, data=data, timeout=self.timeout)
        for attempt in range(STORE_RETRIES):
            if response.status_code < 500:
                break
            # NOTE: FilesystemStorage in Orthanc 1.10.1 removes an attachment's two parent
            # folders once they are empty (Remove), and Create checks that the folder exists
            # before it makes it. A store racing a removal in the same folder then fails with
            # HTTP 500 "Error while accessing the filesystem"; CI hit this once when a test
            # uploaded studies that Orthanc already held. A failed store keeps nothing, so
            # sending the instance again is safe.
            LOG.warning("POST %s answered HTTP %s (%s), sending the instance again", url,
                        response.status_code, _error_text(response))
            time.sleep(0.2 * (attempt + 1))
            response = self._session().post(url, data=data, timeout=self.timeout)
        if response.status_code != 200:
            return UploadResult(response.status_code, "Rejected", len(data), error=_error_text(response))
        answer = response.json()
        return UploadResult(200, str(answer.get("Status")), len(data),
                            instance_id=answer.get("ID"), study_id=answer.get("ParentStudy"))

    def submit(self, data: bytes) -> Future[UploadResult]:
        return self._executor.submit(self.upload, data)

    def upload_many(self, files: Iterable[bytes]) -> list[UploadResult]:
        """Upload files in parallel and return the results in input order."""
        limit = threading.BoundedSemaphore(self.threads * 2)
        futures: list[Future[UploadResult]] = []
        for data in files:
            limit.acquire()
            future = self.submit(data)
            future.add_done_callback(lambda _future: limit.release())
            futures.append(future)
        return [future.result() for future in futures]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def __enter__(self) -> Uploader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _error_text(response: requests.Response) -> str:
    """Return Orthanc's error message (HttpDescribeErrors) or the start of the body."""
    try:
        details = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    if isinstance(details, dict):
        return f"HTTP {response.status_code}: {details.get('Message')} ({details.get('Details', '')})"
    return f"HTTP {response.status_code}: {str(details)[:200]}"


def testdata_paths() -> list[Path]:
    """Return pydicom's bundled test files that may be DICOM, sorted by path."""
    from pydicom.data import get_testdata_files

    paths = []
    for name in get_testdata_files():
        path = Path(name)
        if not path.is_file() or path.suffix.lower() in NOT_DICOM_SUFFIXES or path.name in NOT_DICOM_NAMES:
            continue
        paths.append(path)
    return sorted(paths)


def upload_testdata(uploader: Uploader) -> dict[str, Any]:
    """Upload pydicom's test files; return counts, rejected file names and study IDs.

    Files that Orthanc rejects are counted, not raised: they are the real bad input.
    """
    import pydicom.data

    data_root = Path(pydicom.data.__file__).parent
    paths = testdata_paths()
    results = uploader.upload_many(path.read_bytes() for path in paths)
    rejected = [
        {"file": path.relative_to(data_root).as_posix(), "error": result.error}
        for path, result in zip(paths, results)
        if not result.accepted
    ]
    accepted = [result for result in results if result.accepted]
    return {
        "files": len(paths),
        "accepted": len(accepted),
        "already_stored": sum(1 for result in accepted if result.status == "AlreadyStored"),
        "rejected": len(rejected),
        "rejected_files": rejected,
        "study_ids": sorted({result.study_id for result in accepted if result.study_id}),
        "bytes": sum(result.size for result in accepted),
    }


def upload_study(uploader: Uploader, study: GeneratedStudy) -> list[UploadResult]:
    """Upload every instance of study; raise RuntimeError if Orthanc rejects one."""
    results = uploader.upload_many(study.iter_files())
    for index, result in enumerate(results):
        if not result.accepted:
            raise RuntimeError(
                f"Orthanc at {uploader.url} rejected instance {index + 1} of generated "
                f"{study.shape.name} study {study.study_instance_uid}: {result.error}"
            )
    return results


# Demo set


def study_dates(count: int, seed: int, year_from: int, year_to: int) -> list[str]:
    """Return count StudyDate values spread evenly over year_from..year_to, day of year seeded."""
    if year_to < year_from:
        raise ValueError(f"year_to ({year_to}) is before year_from ({year_from})")
    rng = random.Random(derive_seed("dates", seed))
    span = year_to - year_from + 1
    dates = []
    for index in range(count):
        year = year_from + (index * span // count if count >= span else round(index * (span - 1) / max(count - 1, 1)))
        day = datetime.date(year, 1, 1) + datetime.timedelta(days=rng.randrange(365))
        dates.append(day.strftime("%Y%m%d"))
    return dates


def plan_demo_studies(
    seed: int = DEFAULT_SEED,
    studies: int = DEFAULT_STUDIES,
    *,
    year_from: int = DEFAULT_YEAR_FROM,
    year_to: int | None = None,
    shapes: Sequence[str] = SHAPE_CYCLE,
    instances: Mapping[str, tuple[int, int]] | None = None,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
) -> list[GeneratedStudy]:
    """Describe the generated part of the demo set: study i has shape shapes[i % len(shapes)].

    Patients get one to several studies each. instances maps a shape name to a
    (min, max) instance count and image_sizes to (rows, columns), overriding the
    defaults in SHAPES. year_to defaults to last year.
    """
    if year_to is None:
        year_to = datetime.date.today().year - 1
    for name in shapes:
        if name not in SHAPES:
            raise ValueError(f"unknown study shape {name!r}: expected one of {', '.join(SHAPES)}")

    rng = random.Random(derive_seed("plan", seed))
    patients = [Patient.fake(derive_seed("demo-patient", seed, index)) for index in range(max(1, studies * 2 // 3))]
    dates = study_dates(studies, seed, year_from, year_to)
    planned = []
    for index in range(studies):
        shape = shapes[index % len(shapes)]
        low, high = (instances or {}).get(shape, SHAPES[shape].instances)
        rows, columns = (image_sizes or {}).get(shape, (None, None))
        planned.append(generate_study(
            shape,
            n_instances=rng.randint(low, high),
            study_date=dates[index],
            seed=derive_seed("demo-study", seed, index),
            patient=rng.choice(patients),
            rows=rows,
            columns=columns,
        ))
    return planned


def load_demo(
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    seed: int = DEFAULT_SEED,
    studies: int = DEFAULT_STUDIES,
    include_testdata: bool = True,
    include_hostile: bool = True,
    year_from: int = DEFAULT_YEAR_FROM,
    year_to: int | None = None,
    shapes: Sequence[str] = SHAPE_CYCLE,
    instances: Mapping[str, tuple[int, int]] | None = None,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """Upload the demo set to the Orthanc at url and return a JSON-ready summary.

    The summary has "testdata", "generated" and "hostile" sections with Orthanc
    study IDs, instance counts and bytes, plus "total_bytes" and "total_instances".
    """
    summary: dict[str, Any] = {"url": url, "seed": seed}
    total_bytes = 0
    total_instances = 0
    with Uploader(url, auth=auth, threads=threads) as uploader:
        if include_testdata:
            summary["testdata"] = upload_testdata(uploader)
            total_bytes += summary["testdata"]["bytes"]
            total_instances += summary["testdata"]["accepted"]
            LOG.info("pydicom test files: %(accepted)d accepted, %(rejected)d rejected", summary["testdata"])

        generated: dict[str, Any] = {"studies": 0, "instances": 0, "bytes": 0, "study_ids": {}, "years": {}}
        for study in plan_demo_studies(seed, studies, year_from=year_from, year_to=year_to, shapes=shapes,
                                       instances=instances, image_sizes=image_sizes):
            results = upload_study(uploader, study)
            generated["studies"] += 1
            generated["instances"] += len(results)
            generated["bytes"] += sum(result.size for result in results)
            generated["study_ids"].setdefault(study.shape.name, []).append(results[0].study_id)
            year = (study.study_date or "")[:4]
            generated["years"][year] = generated["years"].get(year, 0) + 1
        summary["generated"] = generated
        total_bytes += generated["bytes"]
        total_instances += generated["instances"]
        LOG.info("generated studies: %(studies)d studies, %(instances)d instances", generated)

        if include_hostile:
            hostile: dict[str, Any] = {"studies": 0, "bytes": 0, "study_ids": {}}
            for name, study in generate_hostile_studies(seed).items():
                results = upload_study(uploader, study)
                hostile["studies"] += 1
                hostile["bytes"] += sum(result.size for result in results)
                hostile["study_ids"][name] = results[0].study_id
            summary["hostile"] = hostile
            total_bytes += hostile["bytes"]
            total_instances += hostile["studies"]

    summary["total_bytes"] = total_bytes
    summary["total_instances"] = total_instances
    return summary


# Changing a study after export


def add_instance_to_study(
    url: str,
    study_id: str,
    *,
    auth: tuple[str, str] | None = None,
    new_series: bool = True,
    seed: int = DEFAULT_SEED,
    session: requests.Session | None = None,
) -> dict[str, str]:
    """Add one instance to an existing Orthanc study and return its Orthanc and DICOM IDs.

    The new instance copies the study's first instance (same PatientID and
    StudyInstanceUID) with a new SOPInstanceUID, new pixel noise and, when
    new_series is true, a new SeriesInstanceUID. Pixel data is replaced with
    noise only when it is uncompressed Explicit VR Little Endian, so this also
    works for studies from pydicom's test files.
    """
    own_session = session is None
    http = session or requests.Session()
    if own_session:
        http.auth = auth
    base = url.rstrip("/")
    try:
        response = http.get(f"{base}/studies/{study_id}/instances", timeout=60)
        if response.status_code == 404:
            raise ValueError(f"study {study_id} not found on {base}")
        response.raise_for_status()
        instances = sorted(response.json(), key=lambda item: item["ID"])
        if not instances:
            raise ValueError(f"study {study_id} on {base} has no instances")
        template = http.get(f"{base}/instances/{instances[0]['ID']}/file", timeout=120)
        template.raise_for_status()

        dataset = pydicom.dcmread(io.BytesIO(template.content), force=True)
        marker = (study_id, seed, len(instances), new_series)
        sop_uid = derive_uid("added-instance", *marker)
        dataset.SOPInstanceUID = sop_uid
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
        if new_series:
            dataset.SeriesInstanceUID = derive_uid("added-series", *marker)
            dataset.SeriesNumber = 900 + seed % 100
        dataset.InstanceNumber = len(instances) + 1
        if "PixelData" in dataset and dataset.file_meta.get("TransferSyntaxUID") == ExplicitVRLittleEndian:
            noise = random.Random(derive_seed("added-pixels", *marker)).randbytes(len(dataset.PixelData))
            dataset.PixelData = bytes(noise)
            dataset.BitsStored = dataset.BitsAllocated
            dataset.HighBit = dataset.BitsAllocated - 1
        with lenient_writing():
            buffer = io.BytesIO()
            dataset.save_as(buffer, enforce_file_format=True)

        posted = http.post(f"{base}/instances", data=buffer.getvalue(),
                           headers={"Content-Type": "application/dicom"}, timeout=UPLOAD_TIMEOUT)
        if posted.status_code != 200:
            raise RuntimeError(f"Orthanc at {base} rejected the instance added to study {study_id}: "
                               f"{_error_text(posted)}")
        answer = posted.json()
        return {
            "instance_id": answer["ID"],
            "series_id": answer["ParentSeries"],
            "study_id": answer["ParentStudy"],
            "sop_instance_uid": sop_uid,
            "series_instance_uid": str(dataset.SeriesInstanceUID),
        }
    finally:
        if own_session:
            http.close()


# Command line


def parse_range(text: str) -> tuple[int, int]:
    """Parse "N" or "MIN-MAX" into an inclusive range."""
    low, _, high = text.partition("-")
    try:
        values = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid range {text!r}: expected N or MIN-MAX") from None
    if values[0] < 1 or values[1] < values[0]:
        raise argparse.ArgumentTypeError(f"invalid range {text!r}: expected 1 <= MIN <= MAX")
    return values


def parse_size(text: str) -> tuple[int, int]:
    """Parse "ROWSxCOLUMNS"."""
    rows, _, columns = text.lower().partition("x")
    try:
        return int(rows), int(columns)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid image size {text!r}: expected ROWSxCOLUMNS") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Upload generated and real DICOM test studies to an Orthanc.")
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="upload the demo set and print a JSON summary")
    load.add_argument("--url", required=True, help="Orthanc base URL, for example http://127.0.0.1:8042")
    load.add_argument("--user", help="HTTP basic authentication user")
    load.add_argument("--password", help="password of --user")
    load.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of every UID, date and pixel")
    load.add_argument("--studies", type=int, default=DEFAULT_STUDIES, help="number of generated studies")
    load.add_argument("--shapes", default=",".join(SHAPE_CYCLE),
                      help=f"comma-separated cycle of study shapes among {', '.join(SHAPES)}")
    for name, shape in SHAPES.items():
        load.add_argument(f"--{name}-instances", type=parse_range, metavar="MIN-MAX",
                          help=f"instances per {name} study (default {shape.instances[0]}-{shape.instances[1]})")
        load.add_argument(f"--{name}-size", type=parse_size, metavar="ROWSxCOLUMNS",
                          help=f"image size of {name} studies (default {shape.rows}x{shape.columns})")
    load.add_argument("--year-from", type=int, default=DEFAULT_YEAR_FROM, help="earliest StudyDate year")
    load.add_argument("--year-to", type=int, help="latest StudyDate year (default: last year)")
    load.add_argument("--no-testdata", action="store_true", help="skip pydicom's bundled test files")
    load.add_argument("--no-hostile", action="store_true", help="skip the edge-case studies")
    load.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="parallel uploads")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    auth = (args.user, args.password or "") if args.user else None
    instances = {name: getattr(args, f"{name}_instances") for name in SHAPES if getattr(args, f"{name}_instances")}
    sizes = {name: getattr(args, f"{name}_size") for name in SHAPES if getattr(args, f"{name}_size")}
    try:
        summary = load_demo(
            args.url,
            auth=auth,
            seed=args.seed,
            studies=args.studies,
            include_testdata=not args.no_testdata,
            include_hostile=not args.no_hostile,
            year_from=args.year_from,
            year_to=args.year_to,
            shapes=[name.strip() for name in args.shapes.split(",") if name.strip()],
            instances=instances,
            image_sizes=sizes,
            threads=args.threads,
        )
    except (requests.RequestException, RuntimeError, ValueError) as error:
        print(f"loading demo data into {args.url} failed: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
