#!/usr/bin/env bash
# At each site, every round: train on the round's model, mask the update, send the masked file.
# Usage: WORK=... 04-site-train-and-mask.sh SITE ROUND
. "$(dirname "$0")/common.sh"
SITE=$1 R=$(printf %04d "$2")
S="$WORK/$SITE"
cp "$USB/round-$R.model" "$S/"
fedxray train-local "$S/round-$R.model" --data "$S/$SITE.shard" --plan "$S/$FED.plan" \
    --key "$S/$SITE.key" -o "$S/$SITE-round-$R.update" -q
fedxray mask "$S/$SITE-round-$R.update" --plan "$S/$FED.plan" --key "$S/$SITE.key" \
    -o "$S/$SITE-round-$R.masked" -q
carry "$S/$SITE-round-$R.masked"          # -> coordinator (the .update stays here)
