#!/usr/bin/env bash
# At the coordinator, every round: sum the masked files that arrived.
# Writes round-NNNN.closure too when a site is missing (or in strict mode): then the
# surviving sites must run 06-site-reveal.sh before 07-coordinator-unmask.sh.
# Usage: WORK=... 05-coordinator-aggregate.sh ROUND
. "$(dirname "$0")/common.sh"
R=$(printf %04d "$1")
fedxray aggregate "$USB"/*-round-"$R".masked --plan "$COORD/$FED.plan" \
    --key "$COORD/coordinator.key" -o "$COORD/round-$R.sum" \
    --closure "$COORD/round-$R.closure" -q
if [ -f "$COORD/round-$R.closure" ]; then
    carry "$COORD/round-$R.closure"       # -> surviving sites: a second trip this round
fi
