#!/usr/bin/env bash
# Regenerates the measurements behind docs/cost.md (see the page for the measured times).
# Usage: bash scripts/cost.sh [OUT]   (default runs/cost; rerun to continue an interrupted one)
set -euo pipefail
OUT=${1:-runs/cost}
Q=configs/quality-fmnist.yaml          # small-resnet, 40% symmetric noise, 450 steps, no lr decay
C=configs/versus/conv-inst40.yaml      # small-resnet, 40% instance noise, 1,500 steps, lr decay (memorisation)
QS=(--seeds 1,2,3 --jobs 2 --threads 1 --steps 150,300,450 --late-from 300)
CS=(--seeds 1,2,3 --jobs 2 --threads 1 --steps 250,500,1500 --late-from 750)
# 1. learning quality: the paper's algorithm (a meta update every step) against the default recipe and its variants
famus compare --config $Q --engines exact,fd,famus "${QS[@]}" --out "$OUT/quality/perstep" --json "$OUT/quality/perstep.json"
famus compare --config $C --engines exact "${CS[@]}" --set meta_every=1 --set meta_dense=0 \
  --out "$OUT/conv/perstep" --json "$OUT/conv/perstep.json"
variant() {  # name, engine, then --set overrides over the recipe (its schedule: meta_every and meta_dense unset)
  local name=$1 engine=$2; shift 2
  famus compare --config $Q --engines "$engine" "${QS[@]}" --no-erm --set meta_every=null --set meta_dense=null "$@" \
    --out "$OUT/quality/$name" --json "$OUT/quality/$name.json"
  famus compare --config $C --engines "$engine" "${CS[@]}" --no-erm "$@" --out "$OUT/conv/$name" --json "$OUT/conv/$name.json"
}
variant default auto+lagged                           # the default recipe: dense for 200 steps, then every 5th
variant unlagged auto
famus compare --config $Q --engines auto "${QS[@]}" --no-erm --set meta_every=10 --set meta_dense=null \
  --out "$OUT/quality/d200k10" --json "$OUT/quality/d200k10.json"    # every 10th: the quality config only
# the MLP of docs/versus.md: the schedules against exact every step
for c in mlp-sym60 mlp-pair40; do
  famus compare --config configs/versus/$c.yaml --rows configs/versus/rows-cost-mlp.yaml --seeds 1,2,3 --jobs 2 --threads 1 \
    --no-erm --steps 300,1200,2400 --late-from 1200 --out "$OUT/mlp/$c" --json "$OUT/mlp/$c.json"
done
# 2. cost, on a quiet machine (nothing else running): every engine and the recipe side by side in one process
famus bench --model resnet32 --input-shape 3,32,32 --batch-size 100 --method mwnet --threads 1 --repeats 7 \
  --engines exact,fd,famus,famus-fd,jvp,auto,fd+lagged,famus-fd+lagged,default --json "$OUT/bench-resnet32.json"
famus bench --model small-resnet --input-shape 1,28,28 --batch-size 100 --method mwnet --threads 1 --repeats 7 \
  --engines exact,fd,famus,auto,default --steps 1500 --json "$OUT/bench-small-resnet.json"
famus bench --model mlp --input-shape 1,28,28 --batch-size 100 --method mwnet --threads 1 --repeats 30 \
  --engines exact,fd,famus,auto,default --steps 2400 --json "$OUT/bench-mlp.json"
# 3. the two-thirds claim end to end: exact every step and the default recipe side by side (one thread each,
#    nothing else running), then ERM beside the rest of the exact run; seed 1 (the config's)
famus train --config $C --meta-grad exact --meta-every 1 --meta-dense 0 --threads 1 --quiet --out "$OUT/alone/exact" &
{ famus train --config $C --threads 1 --quiet --out "$OUT/alone/default"
  famus train --config $C --method erm --threads 1 --quiet --out "$OUT/alone/erm"; } &
wait
famus report "$OUT/alone/erm" "$OUT/alone/exact" "$OUT/alone/default" --out "$OUT/alone/report"
