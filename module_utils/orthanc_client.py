# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Orthanc REST client shared by every module of this project.

The client speaks only the documented REST API of Orthanc 1.10.1 and later. It retries connection
errors and 5xx responses with exponential backoff, requests uncompressed responses (Orthanc otherwise
gzips them, which costs CPU on both ends and hides Content-Length), and never puts credentials in
exceptions or logs.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable, Iterator

try:
    import requests
    from requests.adapters import HTTPAdapter
    HAS_REQUESTS = True
    REQUESTS_IMPORT_ERROR = None
except ImportError as exc:  # reported by the module through missing_required_lib
    HAS_REQUESTS = False
    REQUESTS_IMPORT_ERROR = exc


# Orthanc IDs are SHA-1 digests written as five groups of eight hex digits.
ORTHANC_ID_PATTERN = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")

# Label names allowed by Orthanc 1.12 (ServerToolbox::IsValidLabel): letters, digits, '_' and '-'.
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Connection options shared by every module; each module merges them into its argument_spec.
CONNECTION_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "url": {"type": "str", "required": True},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "validate_certs": {"type": "bool", "default": True},
    "ca_path": {"type": "path"},
    "timeout": {"type": "float", "default": 60.0},
    "retries": {"type": "int", "default": 4},
    "retry_backoff": {"type": "float", "default": 1.0},
}

# Maximum number of resources one /tools/find or /studies call requests.
DEFAULT_PAGE_SIZE = 500

CHUNK_SIZE = 1024 * 1024


class OrthancError(Exception):
    """An Orthanc request failed; the message names the method, path and status, never credentials."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class OrthancNotFound(OrthancError):
    """Orthanc returned 404 for a resource."""


def is_orthanc_id(value: Any) -> bool:
    return isinstance(value, str) and ORTHANC_ID_PATTERN.match(value) is not None


def require_orthanc_id(value: Any, what: str = "resource") -> str:
    """Return value if it has the shape of an Orthanc ID, so it can safely go into a URL or file name."""
    if not is_orthanc_id(value):
        raise OrthancError(f"invalid Orthanc {what} ID {value!r}: expected five groups of eight hex digits")
    return value


def etag_md5(etag: str | None) -> str | None:
    """Return the MD5 of an attachment ETag such as "3-0123...cdef", or None when it carries none."""
    if not etag:
        return None
    _, separator, md5 = etag.strip().strip('"').rpartition("-")
    md5 = md5.lower()
    if not separator or len(md5) != 32 or any(character not in "0123456789abcdef" for character in md5):
        return None
    return md5


def parse_version(text: str) -> tuple[int, ...]:
    """Parse an Orthanc version such as '1.10.1'; 'mainline' and unknown strings sort last."""
    parts = re.findall(r"\d+", text or "")
    if text and text.strip().lower() == "mainline":
        return (999,)
    return tuple(int(part) for part in parts[:3]) if parts else (0,)


class OrthancFeatures:
    """Features of the connected Orthanc, read from /system."""

    def __init__(self, system: dict[str, Any]):
        self.version_text = str(system.get("Version", ""))
        self.version = parse_version(self.version_text)
        self.api_version = int(system.get("ApiVersion", 0) or 0)
        self.name = str(system.get("Name", ""))

        # Orthanc 1.12.0 added labels; /system reports HasLabels when the index supports them.
        capabilities = system.get("Capabilities") or {}
        self.has_labels = bool(system.get("HasLabels", capabilities.get("HasLabels", False)))

        # Orthanc 1.12.5 added OrderBy and database-side paging to /tools/find.
        self.has_find_order_by = self.version >= (1, 12, 5)
        self.storage_area_plugin = system.get("StorageAreaPlugin")
        self.database_backend_plugin = system.get("DatabaseBackendPlugin")

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version_text,
            "api_version": self.api_version,
            "name": self.name,
            "has_labels": self.has_labels,
            "has_find_order_by": self.has_find_order_by,
            "storage_area_plugin": self.storage_area_plugin,
            "database_backend_plugin": self.database_backend_plugin,
        }


class OrthancClient:
    """A keep-alive session against one Orthanc server."""

    def __init__(
        self,
        url: str,
        username: str | None = None,
        password: str | None = None,
        validate_certs: bool = True,
        ca_path: str | None = None,
        timeout: float = 60.0,
        retries: int = 4,
        retry_backoff: float = 1.0,
        pool_size: int = 8,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not HAS_REQUESTS:
            raise OrthancError("the Python library 'requests' is required on the host that talks to Orthanc")
        if not re.match(r"^https?://[^/\s]+", url or ""):
            raise OrthancError(f"invalid Orthanc URL {url!r}: expected http://HOST:PORT or https://HOST:PORT")
        if retries < 0:
            raise OrthancError(f"invalid retries {retries}: expected 0 or more")

        self.url = url.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self._sleep = sleep

        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept-Encoding"] = "identity"
        self.session.trust_env = False
        if username:
            self.session.auth = (username, password or "")
        self.session.verify = ca_path if (validate_certs and ca_path) else validate_certs
        self._features: OrthancFeatures | None = None

    @classmethod
    def from_module_params(cls, params: dict[str, Any]) -> "OrthancClient":
        return cls(
            url=params["url"],
            username=params.get("username"),
            password=params.get("password"),
            validate_certs=params.get("validate_certs", True),
            ca_path=params.get("ca_path"),
            timeout=params.get("timeout", 60.0),
            retries=params.get("retries", 4),
            retry_backoff=params.get("retry_backoff", 1.0),
        )

    def close(self) -> None:
        self.session.close()

    # -- transport ------------------------------------------------------------------------------

    def request(self, method: str, path: str, expected: tuple[int, ...] = (200,), **kwargs: Any) -> "requests.Response":
        """Send one request, retrying connection errors, timeouts and 5xx responses with backoff.

        Retrying is safe for every call this project makes: GETs, the read-only /tools/find POST,
        and DELETEs (deleting a resource that is already gone returns 404, which callers handle).
        """
        kwargs.setdefault("timeout", self.timeout)
        attempt = 0
        while True:
            try:
                response = self.session.request(method, self.url + path, **kwargs)
            except requests.exceptions.SSLError as exc:
                raise OrthancError(
                    f"TLS verification failed for {self.url}: {type(exc).__name__}. "
                    "Set ca_path to the CA bundle that signed the server certificate"
                ) from None
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:
                # ChunkedEncodingError: the connection closed before the whole response body arrived.
                if attempt >= self.retries:
                    raise OrthancError(
                        f"{method} {path} on {self.url} failed after {attempt + 1} attempts: "
                        f"{type(exc).__name__}. Check that Orthanc is running and reachable"
                    ) from None
            else:
                if response.status_code in expected:
                    return response
                if response.status_code < 500 or attempt >= self.retries:
                    raise self._status_error(method, path, response)
                response.close()

            self._sleep(self.retry_backoff * (2 ** attempt))
            attempt += 1

    def _status_error(self, method: str, path: str, response: "requests.Response") -> OrthancError:
        status = response.status_code
        if status == 401:
            hint = "check the username and password"
        elif status == 403:
            hint = "the user lacks permission for this call"
        elif status == 404:
            return OrthancNotFound(f"{method} {path} on {self.url}: not found (404)", status)
        else:
            hint = (response.text or "")[:200].replace("\n", " ")
        return OrthancError(f"{method} {path} on {self.url} failed with HTTP {status}: {hint}", status)

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> Any:
        response = self.request("GET", path, params=params)
        return self._decode(path, response)

    def post_json(self, path: str, body: Any) -> Any:
        response = self.request("POST", path, json=body)
        return self._decode(path, response)

    def _decode(self, path: str, response: "requests.Response") -> Any:
        try:
            return response.json()
        except ValueError:
            raise OrthancError(
                f"{path} on {self.url} did not return JSON: the URL may not point at an Orthanc REST API"
            ) from None

    # -- server ---------------------------------------------------------------------------------

    def features(self) -> OrthancFeatures:
        if self._features is None:
            system = self.get_json("/system")
            if not isinstance(system, dict) or "Version" not in system or "ApiVersion" not in system:
                raise OrthancError(f"{self.url}/system did not return Orthanc's system information: not an Orthanc server?")
            self._features = OrthancFeatures(system)
        return self._features

    def statistics(self) -> dict[str, Any]:
        return self.get_json("/statistics")

    # -- studies --------------------------------------------------------------------------------

    def find_studies(self, query: dict[str, str], page_size: int = DEFAULT_PAGE_SIZE,
                     extra: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield expanded studies matching a /tools/find query, one page at a time.

        NOTE: Orthanc before 1.12.5 applies Limit/Since after it has matched every study and gives
        no order guarantee, so a study added between two pages may be skipped or seen twice. Callers
        deduplicate by ID; a skipped study is simply found by the next run.
        """
        since = 0
        seen: set[str] = set()
        while True:
            body = {"Level": "Study", "Query": query, "Expand": True, "Limit": page_size, "Since": since}
            if extra:
                body.update(extra)
            page = self._find(body)
            for study in page:
                if isinstance(study, dict) and study.get("ID") not in seen:
                    seen.add(study.get("ID"))
                    yield study
            if len(page) < page_size:
                return
            since += page_size

    def find_study_ids(self, query: dict[str, str], limit: int) -> list[str]:
        """Return the IDs of at most limit studies matching a /tools/find query, without their tags."""
        page = self._find({"Level": "Study", "Query": query, "Limit": limit})
        return [item for item in page if isinstance(item, str)]

    def _find(self, body: dict[str, Any]) -> list[Any]:
        """Send one /tools/find request and return its answer, which must be a list."""
        page = self.post_json("/tools/find", body)
        if not isinstance(page, list):
            raise OrthancError(f"/tools/find on {self.url} returned {type(page).__name__}, expected a list")
        return page

    def list_studies(self, page_size: int = DEFAULT_PAGE_SIZE) -> Iterator[dict[str, Any]]:
        """Yield every study, expanded, through /studies?expand&since&limit."""
        since = 0
        while True:
            page = self.get_json("/studies", params={"expand": "", "since": since, "limit": page_size})
            for study in page:
                yield study
            if len(page) < page_size:
                return
            since += page_size

    def study(self, study_id: str) -> dict[str, Any]:
        return self.get_json(f"/studies/{require_orthanc_id(study_id, 'study')}")

    def study_statistics(self, study_id: str) -> dict[str, Any]:
        return self.get_json(f"/studies/{require_orthanc_id(study_id, 'study')}/statistics")

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        return self.get_json(f"/studies/{require_orthanc_id(study_id, 'study')}/series", params={"expand": ""})

    def study_instances(self, study_id: str) -> list[dict[str, Any]]:
        """Return the study's instances with MainDicomTags, ParentSeries, FileSize and FileUuid."""
        return self.get_json(f"/studies/{require_orthanc_id(study_id, 'study')}/instances")

    def study_last_update(self, study_id: str) -> str:
        """Return the study's LastUpdate metadata (UTC, YYYYMMDDTHHMMSS) as plain text."""
        response = self.request("GET", f"/studies/{require_orthanc_id(study_id, 'study')}/metadata/LastUpdate")
        return response.text.strip()

    def patient_is_protected(self, patient_id: str) -> bool:
        response = self.request("GET", f"/patients/{require_orthanc_id(patient_id, 'patient')}/protected")
        value = response.text.strip()
        if value not in ("0", "1"):
            raise OrthancError(f"/patients/{patient_id}/protected on {self.url} returned {value!r}, expected 0 or 1")
        return value == "1"

    def study_labels(self, study_id: str) -> list[str]:
        return self.get_json(f"/studies/{require_orthanc_id(study_id, 'study')}/labels")

    # -- instances ------------------------------------------------------------------------------

    def instance_attachment_info(self, instance_id: str) -> dict[str, Any]:
        """Return Uuid, sizes and MD5s of the instance's stored DICOM file (Orthanc 1.10.0+)."""
        return self.get_json(f"/instances/{require_orthanc_id(instance_id, 'instance')}/attachments/dicom/info")

    def open_instance_attachment(self, instance_id: str) -> tuple["requests.Response", str | None]:
        """Open a streaming download of the stored DICOM file with the MD5 that Orthanc stored for it.

        Orthanc 1.9.2 and later send /attachments/dicom/data with an ETag "REVISION-MD5" built from
        the attachment's stored UncompressedMD5 (SetAttachmentETag in OrthancRestResources.cpp), so
        one request returns the file and the checksum to check it against. The MD5 is None when the
        ETag is missing or has none (StoreMD5ForAttachments false), and the caller then calls
        instance_attachment_info(). The caller closes the response.
        """
        response = self.request("GET", f"/instances/{require_orthanc_id(instance_id, 'instance')}/attachments/dicom/data",
                                stream=True)
        return response, etag_md5(response.headers.get("ETag"))

    def upload_instance(self, data: bytes) -> dict[str, Any]:
        response = self.request("POST", "/instances", data=data,
                                headers={"Content-Type": "application/dicom"})
        return self._decode("/instances", response)

    def delete_instance(self, instance_id: str) -> bool:
        """Delete one instance; return False if it was already gone."""
        try:
            self.request("DELETE", f"/instances/{require_orthanc_id(instance_id, 'instance')}")
        except OrthancNotFound:
            return False
        return True
