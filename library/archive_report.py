#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: contributors to this project
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: archive_report
short_description: Write readable reports of the Orthanc servers, the tape archive and its cartridges
description:
  - Collects figures from the catalog and from each server in O(servers) (C(/system), C(/statistics),
    and the StudyDate of every study), and writes into O(dest) one report for the fleet
    (C(fleet.html), C(fleet.json), C(fleet-*.csv)) and one per server (C(server-NAME.*)).
  - Each report shows disk usage, studies per year as a bar chart (in Orthanc, archived, deleted from
    Orthanc), what was archived and freed per day, cartridge use and remaining capacity, and the copies
    waiting for verification.
  - With O(volume_serials), also writes a report of each volume's contents as the catalog lists them
    (C(volume-SERIAL.*)).
  - The HTML page is standalone, with inline CSS and inline SVG charts and no script, so it opens offline.
  - A server that cannot be reached is reported as unreachable with the error, and the other figures
    are still written; the module warns but does not fail.
  - Rewrites the files only when a figure changed (the generation time alone does not count), so
    C(changed) means the figures changed. In check mode writes nothing.
  - Reports name studies by Orthanc ID and StudyDate only, never by patient.
version_added: "0.1.0"
author: orthanc-tape-archive contributors
extends_documentation_fragment:
  - orthanc_connection.CATALOG
options:
  dest:
    description:
      - Folder the report files are written to, created with mode 0750 if missing.
    type: path
    required: true
  servers:
    description:
      - The Orthanc servers of the fleet. A server without C(url) is reported from the catalog alone.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description:
          - Name of the server in the catalog, as given to M(orthanc_study_archive).
        type: str
        required: true
      url:
        description:
          - Base URL of the server's REST API.
        type: str
      username:
        description:
          - User for HTTP basic authentication.
        type: str
      password:
        description:
          - Password for O(servers[].username). Never shown in output.
        type: str
      validate_certs:
        description:
          - Verify the server's TLS certificate.
        type: bool
        default: true
      ca_path:
        description:
          - PEM file of the CA that signed the server's certificate.
        type: path
      timeout:
        description:
          - Seconds to wait for one answer.
        type: float
        default: 60.0
      storage_directory:
        description:
          - The server's StorageDirectory, when it is mounted on the host that runs the module; its
            filesystem's size and free space are then added to the report.
        type: path
  volume_serials:
    description:
      - Volumes whose contents get their own report.
    type: list
    elements: str
    default: []
  title:
    description:
      - Title at the top of each report.
    type: str
    default: Orthanc tape archive
  formats:
    description:
      - Which files to write.
    type: list
    elements: str
    choices: [html, csv, json]
    default: [html, csv, json]
seealso:
  - module: archive_volume_verify
  - module: archive_catalog_rebuild
"""

EXAMPLES = r"""
- name: Write the fleet report and one report per server
  archive_report:
    dest: /var/lib/orthanc-archive/reports
    catalog_path: /var/lib/orthanc-archive/catalog.sqlite
    servers:
      - name: pacs1
        url: https://pacs1.example.org:8042
        username: archiver
        password: "{{ vault_orthanc_password }}"
      - name: pacs2
        url: https://pacs2.example.org:8042
    volume_serials: [A00001]
"""

RETURN = r"""
files:
  description: Paths of every report file, written or already up to date.
  returned: always
  type: list
  elements: str
written:
  description: Paths of the files written in this run (in check mode, that would be written).
  returned: always
  type: list
  elements: str
totals:
  description: Fleet totals, with C(disk_bytes), C(bytes_archived), C(bytes_freed), C(pending) and C(unreachable).
  returned: always
  type: dict
cartridges:
  description: Every volume in the catalog with its capacity, free space, bytes used and copies by state.
  returned: always
  type: list
  elements: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule

from ansible.module_utils.archive_catalog import CATALOG_ARGUMENT_SPEC, CatalogError, open_catalog
from ansible.module_utils.archive_volume import safe_name
from ansible.module_utils.module_support import merge_specs
from ansible.module_utils.report_data import REPORT_ARGUMENT_SPEC, fleet_report, single_server_report, volume_report
from ansible.module_utils.report_render import csv_tables, render_html, render_json


def same_figures(path, report):
    """Tell whether the JSON report at path holds the same figures as report, the generation time aside."""
    try:
        with open(path, encoding="utf-8") as handle:
            old = json.load(handle)
    except (OSError, ValueError):
        return False
    return dict(old, generated_at=None) == dict(json.loads(render_json(report)), generated_at=None)


def report_files(report, stem, formats):
    """Return {file name: text} of one report in the requested formats."""
    files = {f"{stem}.json": render_json(report)}
    if "html" in formats:
        files[f"{stem}.html"] = render_html(report)
    if "csv" in formats:
        for suffix, text in csv_tables(report).items():
            files[f"{stem}-{suffix}.csv"] = text
    return files


def write_file(path, text):
    temp_path = path + ".partial"
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temp_path, path)


def main():
    argument_spec = merge_specs(CATALOG_ARGUMENT_SPEC, REPORT_ARGUMENT_SPEC)
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    params = module.params
    result = {"changed": False, "files": [], "written": [], "totals": {}, "cartridges": []}
    names = [server["name"] for server in params["servers"]]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        module.fail_json(msg=f"servers lists {', '.join(duplicates)} more than once: give each server once", **result)

    catalog = None
    try:
        catalog = open_catalog(params)
        fleet = fleet_report(catalog, params["servers"], params["title"])
        reports = [("fleet", fleet)]
        reports.extend((f"server-{safe_name(section['name'], 'server')}", single_server_report(fleet, section))
                       for section in fleet["servers"])
        reports.extend((f"volume-{safe_name(serial, 'volume')}",
                        volume_report(catalog, serial, params["title"], fleet["generated_at"]))
                       for serial in params["volume_serials"])
    except CatalogError as exc:
        module.fail_json(msg=f"report failed: {exc}", **result)
    finally:
        if catalog is not None:
            catalog.close()

    result["totals"] = fleet["totals"]
    result["cartridges"] = fleet["cartridges"]
    try:
        if not module.check_mode:
            os.makedirs(params["dest"], mode=0o750, exist_ok=True)
        for stem, report in reports:
            files = report_files(report, stem, params["formats"])
            paths = {os.path.join(params["dest"], name): text for name, text in files.items()}
            result["files"].extend(path for path in paths if path.endswith(tuple(params["formats"])))
            json_path = os.path.join(params["dest"], f"{stem}.json")
            if same_figures(json_path, report) and all(os.path.exists(path) for path in paths):
                continue
            for path, text in paths.items():
                if not path.endswith(tuple(params["formats"])):
                    continue
                result["written"].append(path)
                if not module.check_mode:
                    write_file(path, text)
            # The JSON file records the figures that the next run compares with, so it is always kept.
            if "json" not in params["formats"] and not module.check_mode:
                write_file(json_path, files[f"{stem}.json"])
    except OSError as exc:
        module.fail_json(msg=f"cannot write the report into {params['dest']}: {exc}. Check that the folder "
                             "is writable by the user that runs the module", **result)

    result["changed"] = bool(result["written"])
    if fleet["totals"]["unreachable"]:
        module.warn(f"Orthanc not reachable: {', '.join(fleet['totals']['unreachable'])}; "
                    "their reports show catalog figures only")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
