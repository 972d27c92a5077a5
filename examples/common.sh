# Shared settings for the example scripts; sourced, not run.
# WORK holds one folder per party (as if each were a different hospital's machine) and
# usb/, the only place files travel through.
set -euo pipefail
: "${WORK:?set WORK to a scratch folder, e.g. WORK=/tmp/fedxray-demo}"
FEDXRAY=${FEDXRAY:-fedxray}
USB="$WORK/usb"
COORD="$WORK/coordinator"
FED=${FED:-pneumo}
mkdir -p "$USB"

# carry FILE... : the courier moves files onto the USB stick (or a shared folder, e-mail...).
carry() { cp "$@" "$USB/"; }
