#!/usr/bin/env bash
# Install the missing Debian packages named as arguments, or listed in tools/apt-packages.txt
# when there are no arguments. Runs apt-get through sudo when not root. Safe to run again:
# it calls apt-get only when a package is missing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$#" -gt 0 ]; then
    packages=("$@")
else
    mapfile -t packages < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$repo/tools/apt-packages.txt" | grep -v '^$')
fi

missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    if [ "$status" != "install ok installed" ]; then
        missing+=("$package")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null; then
    sudo=(sudo)
else
    echo "apt-install: missing packages ${missing[*]}, and this user is not root and has no sudo: install them as root" >&2
    exit 1
fi

echo "apt-install: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
