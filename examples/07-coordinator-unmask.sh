#!/usr/bin/env bash
# At the coordinator, every round: remove the masks and write the next global model.
# Usage: WORK=... 07-coordinator-unmask.sh ROUND
. "$(dirname "$0")/common.sh"
R=$1
CUR=$(printf %04d "$R") NEXT=$(printf %04d $((R + 1)))
reveals=()
for f in "$USB"/*-round-"$CUR".reveal; do [ -e "$f" ] && reveals+=("$f"); done
fedxray unmask "$COORD/round-$CUR.sum" ${reveals[@]+"${reveals[@]}"} --plan "$COORD/$FED.plan" \
    --key "$COORD/coordinator.key" --model "$COORD/round-$CUR.model" \
    -o "$COORD/round-$NEXT.model" -q
fedxray verify "$COORD/round-$NEXT.model" --plan "$COORD/$FED.plan" -q
carry "$COORD/round-$NEXT.model"          # -> every site
