#!/usr/bin/env bash
# At a surviving site, only when the coordinator sent a closure for the round.
# Usage: WORK=... 06-site-reveal.sh SITE ROUND
. "$(dirname "$0")/common.sh"
SITE=$1 R=$(printf %04d "$2")
S="$WORK/$SITE"
cp "$USB/round-$R.closure" "$S/"
fedxray reveal "$S/round-$R.closure" --plan "$S/$FED.plan" --key "$S/$SITE.key" \
    -o "$S/$SITE-round-$R.reveal" -q
carry "$S/$SITE-round-$R.reveal"          # -> coordinator
