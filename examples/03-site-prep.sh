#!/usr/bin/env bash
# At each site, once: check the plan, then turn the exported images into the site's shard.
# Usage: WORK=... 03-site-prep.sh SITE IMAGE_FOLDER
. "$(dirname "$0")/common.sh"
SITE=$1 DATA=$2
S="$WORK/$SITE"
cp "$USB/$FED.plan" "$S/"
# Compare the printed coordinator fingerprint with the one the coordinator reads out by phone.
fedxray verify "$S/$FED.plan" --key "$S/$SITE.key" -q
fedxray prep "$DATA" -o "$S/$SITE.shard" --plan "$S/$FED.plan" --key "$S/$SITE.key" -q
