"""Shared pytest fixtures: private Orthanc servers on 127.0.0.1, started from tools/orthanc_local.py.

pytest.ini puts the repository root on sys.path, so tests import `tools.orthanc_local`
and `tools.demo_data` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tools import demo_data
from tools.orthanc_local import ORTHANC_BINARY, LocalOrthanc

# Tests do not need durable storage, and skipping fsync() per file makes uploads
# several times faster.
SERVER_DEFAULTS: dict[str, Any] = {"stable_age": 1, "sync_storage": False}

# A demo set that loads in about a second: small studies, no large radiographs.
SMALL_DEMO: dict[str, Any] = {
    "studies": 10,
    "instances": {"ct": (3, 6), "mr": (2, 4), "cr": (1, 2), "dx": (1, 2), "us": (1, 3), "mg": (2, 2)},
    "image_sizes": {"cr": (256, 256), "dx": (256, 256), "mg": (256, 192)},
}


@dataclass
class OrthancHandle:
    """A running test Orthanc: its url, an authenticated session and its folders."""

    server: LocalOrthanc
    session: requests.Session

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def auth(self) -> tuple[str, str] | None:
        return self.server.auth

    @property
    def storage_dir(self) -> Path:
        return self.server.storage_dir

    def get_json(self, path: str, **kwargs: Any) -> Any:
        """GET url + path, raise on HTTP errors and return the decoded JSON."""
        response = self.session.get(f"{self.url}{path}", timeout=60, **kwargs)
        response.raise_for_status()
        return response.json()

    def load_demo(self, **kwargs: Any) -> dict[str, Any]:
        """Call demo_data.load_demo on this server; SMALL_DEMO sizes unless kwargs override them."""
        options = {**SMALL_DEMO, **kwargs}
        return demo_data.load_demo(self.url, auth=self.auth, **options)


def require_orthanc() -> None:
    if not Path(ORTHANC_BINARY).exists():
        pytest.fail(f"Orthanc is not installed at {ORTHANC_BINARY}: run `apt-get install orthanc`", pytrace=False)


@pytest.fixture
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., OrthancHandle]]:
    """Return a function that starts an Orthanc with LocalOrthanc keyword arguments.

    Every server it started is stopped at the end of the test.
    """
    require_orthanc()
    handles: list[OrthancHandle] = []

    def start(**kwargs: Any) -> OrthancHandle:
        server = LocalOrthanc(tmp_path_factory.mktemp("orthanc"), **{**SERVER_DEFAULTS, **kwargs}).start()
        handle = OrthancHandle(server, server.session())
        handles.append(handle)
        return handle

    yield start

    # Orthanc 1.10.1 takes about 2 s to stop, so several servers are stopped in parallel.
    for handle in handles:
        handle.session.close()
    with ThreadPoolExecutor(max_workers=max(1, len(handles))) as executor:
        list(executor.map(lambda handle: handle.server.stop(), handles))


@pytest.fixture
def orthanc(orthanc_factory: Callable[..., OrthancHandle]) -> OrthancHandle:
    """A fresh, empty Orthanc for one test, with SERVER_DEFAULTS and no authentication."""
    return orthanc_factory()


@pytest.fixture(scope="session")
def orthanc_shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancHandle]:
    """One Orthanc for the whole test session; tests must not depend on it being empty."""
    require_orthanc()
    server = LocalOrthanc(tmp_path_factory.mktemp("orthanc-shared"), **SERVER_DEFAULTS).start()
    handle = OrthancHandle(server, server.session())
    yield handle
    handle.session.close()
    server.stop()
