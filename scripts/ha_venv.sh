#!/usr/bin/env bash
# Build the venv `make test-ha` runs Home Assistant Core from. Home Assistant needs Python >= 3.13, which Debian 12
# does not ship: take the first python3.13+ on PATH, else one that pyenv has installed, else say what to install.
set -euo pipefail
venv="${1:?usage: scripts/ha_venv.sh VENV}"
version="${HA_VERSION:-2025.4.4}"
if [ -x "$venv/bin/hass" ] && [ -f "$venv/.ha-$version" ]; then
    exit 0
fi
python=""
for candidate in python3.14 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1; then python="$(command -v "$candidate")"; break; fi
done
if [ -z "$python" ]; then
    for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[3-9]*/bin/python3; do
        [ -x "$candidate" ] && python="$candidate" && break
    done
fi
if [ -z "$python" ]; then
    echo "test-ha: Home Assistant needs Python >= 3.13 and none was found (PATH, pyenv): install one, e.g." \
         "'pyenv install 3.13', or put python3.13 on PATH" >&2
    exit 2
fi
echo "test-ha: Home Assistant $version in $venv with $("$python" --version)"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "homeassistant==$version"
touch "$venv/.ha-$version"
