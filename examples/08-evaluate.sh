#!/usr/bin/env bash
# At a site with held-out data: evaluate a global model on it.
# Usage: WORK=... 08-evaluate.sh SITE ROUND TEST_IMAGE_FOLDER
. "$(dirname "$0")/common.sh"
SITE=$1 R=$(printf %04d "$2") DATA=$3
S="$WORK/$SITE"
cp "$USB/round-$R.model" "$S/"
fedxray prep "$DATA" -o "$S/test.shard" --plan "$S/$FED.plan" --key "$S/$SITE.key" -q --force
fedxray evaluate "$S/round-$R.model" "$S/test.shard" --plan "$S/$FED.plan" --bootstrap 200 \
    --json > "$S/evaluation-round-$R.json"
fedxray privacy "$S/$SITE.ledger"
