#!/usr/bin/env bash
# At each site, once: create the site's identity. SITE.key never leaves the site.
# Usage: WORK=... 01-site-keygen.sh SITE
. "$(dirname "$0")/common.sh"
SITE=$1
mkdir -p "$WORK/$SITE"
fedxray keygen "$SITE" -o "$WORK/$SITE" -q
carry "$WORK/$SITE/$SITE.pub"            # -> coordinator; read the fingerprint to them by phone
fedxray inspect "$WORK/$SITE/$SITE.pub" --json | grep -q '"kind": "card"'
