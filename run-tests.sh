#!/usr/bin/env bash
# Run the whole test suite: the ansible-doc check of every module, ansible-lint with the
# production profile, then pytest (unit tests and playbook runs against real local Orthanc
# servers). Installs missing Debian packages (tools/apt-packages.txt) and creates or updates
# .venv first. Arguments go to pytest, for example ./run-tests.sh -k playbook -x
set -euo pipefail

repo=$(cd "$(dirname "$0")" && pwd)
cd "$repo"

tools/apt-install.sh
tools/venv.sh
export PATH="$repo/.venv/bin:$PATH"
PYTHON="$repo/.venv/bin/python" tools/install_collections.sh

echo "== ansible-doc: documentation of every module in library/"
python tools/check_module_docs.py

echo "== ansible-lint --profile production"
ansible-lint --profile production

echo "== pytest"
pytest "$@"

# Each scenario converges a role against the tape simulator in tests/tapesim on this host.
for scenario in tape_drive ltfs; do
    echo "== molecule test -s $scenario"
    molecule test -s "$scenario"
done
