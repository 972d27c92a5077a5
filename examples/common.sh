# Shared settings for the example scripts; sourced, not run.
# WORK holds one folder per party (as if each were a different hospital's machine) and
# usb/, the only place files travel through.
set -euo pipefail
: "${WORK:?set WORK to a scratch folder, e.g. WORK=/tmp/fedxray-demo}"
USB="$WORK/usb"
COORD="$WORK/coordinator"
FED=${FED:-pneumo}
mkdir -p "$USB"

# Which fedxray runs the steps, with no venv to activate: $FEDXRAY (a path) if set; else the
# one installed beside $PYTHON (or `$PYTHON -m fedxray`); else `fedxray` on PATH; else the
# repository's .venv, where the README installs it.
EXAMPLES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${FEDXRAY:-}" ]; then
    FEDXRAY_CMD=("$FEDXRAY")
elif [ -n "${PYTHON:-}" ]; then
    PYTHON=$(command -v "$PYTHON") || { echo "error: PYTHON=$PYTHON not found" >&2; exit 1; }
    if [ -x "$(dirname "$PYTHON")/fedxray" ]; then
        FEDXRAY_CMD=("$(dirname "$PYTHON")/fedxray")
    else
        FEDXRAY_CMD=("$PYTHON" -m fedxray)
    fi
elif command -v fedxray >/dev/null; then
    FEDXRAY_CMD=("$(command -v fedxray)")
elif [ -x "$EXAMPLES_DIR/../.venv/bin/fedxray" ]; then
    FEDXRAY_CMD=("$EXAMPLES_DIR/../.venv/bin/fedxray")
else
    echo "error: fedxray not found; set FEDXRAY=/path/to/venv/bin/fedxray" \
        "or PYTHON=/path/to/venv/bin/python" >&2
    exit 1
fi
# `command` so that a fedxray on PATH is run, not this function again.
fedxray() { command "${FEDXRAY_CMD[@]}" "$@"; }

# carry FILE... : the courier moves files onto the USB stick (or a shared folder, e-mail...).
carry() { cp "$@" "$USB/"; }
