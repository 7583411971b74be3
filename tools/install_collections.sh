#!/usr/bin/env bash
# Install the collections of collections/requirements.yml into collections/ (git-ignored), where
# ansible.cfg's collections_path finds them. Only playbooks/awx_setup.yml needs them (awx.awx);
# ansible-lint needs them to check that playbook's module arguments.
#
# Tries Ansible Galaxy first. Where Galaxy cannot be reached, it takes awx.awx from the
# `ansible` community package on PyPI, whose wheel ships the collection (ansible 12.3.0 ships
# awx.awx 24.6.1; ansible 13 deprecated it and 14 dropped it). Safe to run again.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
target="$repo/collections"
python=${PYTHON:-python3}
wheel_version=12.3.0

if [ -f "$target/ansible_collections/awx/awx/MANIFEST.json" ]; then
    exit 0
fi

if ansible-galaxy collection install --timeout 20 -r "$repo/collections/requirements.yml" -p "$target" >/dev/null 2>&1; then
    echo "install_collections: installed collections/requirements.yml from Galaxy into $target"
    exit 0
fi

echo "install_collections: Galaxy unreachable; taking awx.awx from the PyPI package ansible==$wheel_version"
download=$(mktemp -d)
trap 'rm -rf "$download"' EXIT
"$python" -m pip download --quiet --disable-pip-version-check --no-deps --dest "$download" "ansible==$wheel_version"
"$python" - "$download"/ansible-"$wheel_version"-py3-none-any.whl "$target" <<'PY'
import sys
import zipfile

wheel, target = sys.argv[1], sys.argv[2]
prefix = "ansible_collections/awx/awx/"
with zipfile.ZipFile(wheel) as archive:
    members = [name for name in archive.namelist() if name.startswith(prefix)]
    if not members:
        sys.exit(f"install_collections: {wheel} does not contain {prefix}")
    archive.extractall(target, members)
print(f"install_collections: extracted {len(members)} files of awx.awx into {target}")
PY
