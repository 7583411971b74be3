#!/usr/bin/env bash
# Run the archive end to end on this machine: a private Orthanc on 127.0.0.1 with demo studies is
# archived to a simulated tape library under .demo/ (tests/tapesim). Its LTFS cartridges are small,
# so the run fills one and continues on the next. The studies are verified after a remount,
# deleted from Orthanc, and summarized.
#
#   ./demo.sh           start (or reuse) the demo Orthanc and run the archive with reclaim
#   ./demo.sh --reset   stop the demo Orthanc, delete .demo/ and start over with fresh data
#   ./demo.sh --stop    stop the demo Orthanc and keep .demo/
#
# Demo data is loaded only into a new demo Orthanc, so a second ./demo.sh finds nothing left
# to archive. The demo Orthanc keeps running after the run, for a look at it or a second run.
set -euo pipefail

repo=$(cd "$(dirname "$0")" && pwd)
cd "$repo"
demo_dir=${ORTHANC_DEMO_DIR:-$repo/.demo}
export ORTHANC_DEMO_DIR="$demo_dir"
orthanc_dir="$demo_dir/orthanc"
tapesim_dir="$demo_dir/tapesim"
python=".venv/bin/python"
# The simulated library: one drive (/dev/sg0), a changer (/dev/sg1) and four 40 MiB cartridges.
# inventory/local/group_vars/all.yml names the same devices and barcodes.
demo_barcodes=DEMO01L8,DEMO02L8,DEMO03L8,DEMO04L8
demo_capacity=40M

usage() {
    sed -n '7,9p' "$0" | sed 's/^# //'
}

# Unmount any LTFS volume of the simulated library left mounted under the demo folder, so that
# rm -rf never walks into a mounted volume.
unmount_tapes() {
    grep -F " fuse" /proc/self/mounts | cut -d' ' -f2 | grep -F "$demo_dir/" | while read -r mount_point; do
        fusermount3 -u -z "$mount_point" || true
    done
}

stop_orthanc() {
    if [ -x "$python" ] && [ -f "$orthanc_dir/orthanc.json" ]; then
        "$python" tools/orthanc_local.py stop --dir "$orthanc_dir" >/dev/null
        echo "demo: stopped the demo Orthanc in $orthanc_dir"
    fi
}

case "${1:-}" in
    "") ;;
    --reset)
        stop_orthanc
        unmount_tapes
        rm -rf "$demo_dir"
        echo "demo: removed $demo_dir"
        ;;
    --stop)
        stop_orthanc
        exit 0
        ;;
    -h|--help)
        usage
        exit 0
        ;;
    *)
        echo "demo: invalid argument $1: expected --reset, --stop or nothing" >&2
        usage >&2
        exit 2
        ;;
esac

tools/apt-install.sh python3 python3-venv orthanc fuse3 libfuse3-3
tools/venv.sh
export PATH="$repo/.venv/bin:$PATH"
mkdir -p "$demo_dir"

# The simulator's mtx, mkltfs, ltfs and ltfsck go on PATH for this run only. The roles run the
# same commands as on a real tape host.
if [ ! -f "$tapesim_dir/library.json" ]; then
    "$python" -m tests.tapesim init --state "$tapesim_dir" --drives 1 --slots 8 \
        --cartridges "$demo_barcodes" --capacity "$demo_capacity" --index-write-seconds 0.5
    echo "demo: created a simulated tape library in $tapesim_dir (cartridges $demo_barcodes, $demo_capacity each)"
fi
eval "$("$python" -m tests.tapesim env --state "$tapesim_dir")"

# Reuse a running demo Orthanc, restart a stopped one on its old storage, or create a new one.
new_server=false
if [ ! -f "$orthanc_dir/orthanc.json" ]; then
    new_server=true
fi
if status=$("$python" tools/orthanc_local.py status --dir "$orthanc_dir" 2>/dev/null); then
    url=$(printf '%s' "$status" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["url"])')
    echo "demo: reusing the demo Orthanc at $url"
else
    started=$("$python" tools/orthanc_local.py start --dir "$orthanc_dir" --stable-age 2)
    url=$(printf '%s' "$started" | "$python" -c 'import json, sys; print(json.load(sys.stdin)["url"])')
    echo "demo: started the demo Orthanc at $url (data in $orthanc_dir)"
fi
printf '%s\n' "$url" > "$demo_dir/orthanc.url"

if [ "$new_server" = true ] || [ ! -f "$demo_dir/demo-data.json" ]; then
    echo "demo: loading pydicom's DICOM test files and generated studies from 1998 to last year"
    "$python" tools/demo_data.py load --url "$url" > "$demo_dir/demo-data.json.tmp"
    mv "$demo_dir/demo-data.json.tmp" "$demo_dir/demo-data.json"
    # The archive leaves out studies that received an instance within StableAge (2 s here).
    sleep 3
else
    echo "demo: demo data already loaded ($demo_dir/demo-data.json); ./demo.sh --reset starts over"
fi

echo "demo: ansible-playbook archive.yml -e archive_reclaim=true"
status=0
ansible-playbook archive.yml -e archive_reclaim=true || status=$?

echo
echo "demo: the demo Orthanc is still running at $url"
echo "demo: report in $demo_dir/reports/latest.json, catalog $demo_dir/catalog.sqlite, cartridges in $tapesim_dir/cartridges"
echo "demo: stop it with ./demo.sh --stop, or start over with ./demo.sh --reset"
exit "$status"
