# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the options shared by the modules of this project."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  url:
    description:
      - Base URL of the Orthanc REST API, for example C(https://pacs1.example.org:8042).
      - Only C(http) and C(https) are accepted.
    type: str
    required: true
  username:
    description:
      - User for HTTP basic authentication. Leave unset when Orthanc has authentication off.
    type: str
  password:
    description:
      - Password for O(username). Never shown in output; keep it in Ansible Vault or an AWX credential.
    type: str
  validate_certs:
    description:
      - Verify the server's TLS certificate. Turn off only for a test server.
    type: bool
    default: true
  ca_path:
    description:
      - PEM file of the CA that signed Orthanc's certificate, when it is not in the system trust store.
    type: path
  timeout:
    description:
      - Seconds to wait for Orthanc to answer one request.
    type: float
    default: 60.0
  retries:
    description:
      - How many times a request is retried after a connection error, a timeout or an HTTP 5xx answer.
    type: int
    default: 4
  retry_backoff:
    description:
      - Seconds before the first retry; each further retry waits twice as long.
    type: float
    default: 1.0
"""

    CATALOG = r"""
options:
  catalog_backend:
    description:
      - Where the archive catalog lives.
    type: str
    choices: [sqlite, postgresql]
    default: sqlite
  catalog_path:
    description:
      - SQLite catalog file on the host that runs the module, created with mode 0600 if missing.
      - Used when O(catalog_backend=sqlite). In AWX, point it at persistent storage on the tape host.
    type: path
    default: /var/lib/orthanc-archive/catalog.sqlite
  catalog_dsn:
    description:
      - libpq connection string of the PostgreSQL catalog, used when O(catalog_backend=postgresql).
      - May contain a password, so it is never shown in output.
    type: str
"""

    VOLUME = r"""
options:
  volume_path:
    description:
      - Root of the mounted LTFS volume, or of a plain folder that stands in for one.
      - An LTFS volume is recognised by its C(user.ltfs.volumeSerial) extended attribute; a plain folder
        gets a marker file with a generated serial on first use.
    type: path
    required: true
  volume_reserve_bytes:
    description:
      - Bytes of the volume's free space that are never used for containers, kept for LTFS index writes.
    type: int
    default: 0
  lock_dir:
    description:
      - Folder for the lock files that keep two runs from writing one volume or reclaiming one server at once.
    type: path
    default: /run/lock
  lock_timeout:
    description:
      - Seconds to wait for another run to release the lock before failing.
    type: float
    default: 600.0
"""
