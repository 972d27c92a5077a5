#!/usr/bin/env bash
# At the coordinator, once: create the federation from the sites' cards.
# Usage: WORK=... 02-coordinator-init.sh SITE.pub... [-- extra init options]
. "$(dirname "$0")/common.sh"
cards=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do cards+=("$USB/$1"); shift; done
[ "${1:-}" = "--" ] && shift
fedxray init --name "$FED" -o "$COORD" -q "${cards[@]}" "$@"
carry "$COORD/$FED.plan" "$COORD/round-0001.model"     # -> every site
