#!/usr/bin/env bash
# The whole offline workflow with the bundled sample data: three hospitals, a coordinator
# and a USB stick, with the default model (scatter-linear). Round 1: every site releases its
# DP mean feature (the centring round) and delivers (one trip). Round 2, the training round:
# hospital-c's file never arrives, so the coordinator sends a closure and the two survivors
# reveal (second trip).
#
# Usage: WORK=/tmp/fedxray-demo examples/demo-offline.sh
# No venv to activate: see common.sh for how the scripts find fedxray (FEDXRAY, PYTHON).
# Small settings by default so that it runs in a few minutes on a laptop; IMAGE_SIZE and
# LOCAL_EPOCHS change them.
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
DATA=${DATA:-$HERE/../sample_data}
SITES="hospital-a hospital-b hospital-c"

for s in $SITES; do "$HERE/01-site-keygen.sh" "$s"; done
# --min-sites 2 lets a round finish with two survivors of three: each of the two could then
# recover the other's update from the next model, and only DP protects it. Real federations
# that expect dropouts should have more sites instead.
"$HERE/02-coordinator-init.sh" hospital-a.pub hospital-b.pub hospital-c.pub -- \
    --rounds 2 --local-epochs "${LOCAL_EPOCHS:-8}" --image-size "${IMAGE_SIZE:-32}" \
    --min-sites 2
for s in $SITES; do "$HERE/03-site-prep.sh" "$s" "$DATA/$s"; done

# Round 1, no dropout: one trip.
for s in $SITES; do "$HERE/04-site-train-and-mask.sh" "$s" 1; done
"$HERE/05-coordinator-aggregate.sh" 1
"$HERE/07-coordinator-unmask.sh" 1

# Round 2, hospital-c drops out after training (its masked file never reaches the USB stick).
"$HERE/04-site-train-and-mask.sh" hospital-a 2
"$HERE/04-site-train-and-mask.sh" hospital-b 2
"$HERE/05-coordinator-aggregate.sh" 2
"$HERE/06-site-reveal.sh" hospital-a 2
"$HERE/06-site-reveal.sh" hospital-b 2
"$HERE/07-coordinator-unmask.sh" 2

"$HERE/08-evaluate.sh" hospital-a 3 "$DATA/test"
echo "done: final model $COORD/round-0003.model; evaluation in $WORK/hospital-a/"
