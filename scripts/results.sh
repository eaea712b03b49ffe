#!/usr/bin/env bash
# Regenerates the runs behind docs/results.md (about an hour on 2 idle cores; see the page).
# Usage: bash scripts/results.sh [OUT]   (default runs/results; rerun to continue an interrupted one)
set -euo pipefail
OUT=${1:-runs/results}
COMMON=(--seeds 1,2,3 --jobs 2 --threads 1 --steps 300,1200,2400 --late-from 1200)
# Table 1: ERM, L2R and MW-Net (and MLC on pair noise) with the exact gradient, the default engine and FaMUS
for s in sym60 pair40 sym40 sym20; do
  methods=l2r,mwnet
  [ "$s" = pair40 ] && methods=l2r,mwnet,mlc
  famus compare --config configs/results-fmnist-$s.yaml --methods $methods --engines exact,fd,famus \
    "${COMMON[@]}" --out "$OUT/$s" --json "$OUT/$s.json"
done
# Table 4-style ablation, MW-Net at 60% symmetric noise: what FaMUS's parts buy
ablate() {  # name, then compare arguments
  local name=$1; shift
  famus compare --config configs/results-fmnist-sym60.yaml --methods mwnet --no-erm "${COMMON[@]}" \
    --out "$OUT/ablation/$name" --json "$OUT/ablation/$name.json" "$@"
}
ablate famus-k2 --engines famus --set engine_options.k=2
ablate famus-no-lg --engines famus --set engine_options.lambda_g=0
ablate block-top --engines block --set "engine_options.layers=[hidden4, fc]"
ablate random-s2 --engines random --set engine_options.s=2
ablate famus-fd --engines famus-fd
# L2R collapses at lr 0.05 in this setting (every engine): ERM, L2R and MW-Net again at lr 0.01
famus compare --config configs/results-fmnist-sym60.yaml --methods l2r,mwnet --engines exact,fd,famus --set lr=0.01 \
  "${COMMON[@]}" --out "$OUT/sym60-lr0.01" --json "$OUT/sym60-lr0.01.json"
# the time column, on a quiet machine
python scripts/results_timing.py --json "$OUT/timing.json"
python scripts/results_page.py "$OUT"
