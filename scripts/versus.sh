#!/usr/bin/env bash
# Regenerates the runs behind docs/versus.md, then its tables (see the page for the measured time).
# Usage: bash scripts/versus.sh [OUT]   (default runs/versus; rerun to continue an interrupted one)
# Needs cleanlab for the prune-and-retrain row: pip install "famus[cleanlab]".
set -euo pipefail
OUT=${1:-runs/versus}
python3 -c "import cleanlab" 2>/dev/null || { echo "versus.sh: the prune row needs cleanlab: pip install 'famus[cleanlab]'" >&2; exit 2; }
COMMON=(--seeds 1,2,3 --jobs 2 --threads 1 --no-erm)
# the MLP of docs/results.md, four kinds of noise: every row
for c in mlp-sym60 mlp-sym40 mlp-pair40 mlp-inst40; do
  famus compare --config configs/versus/$c.yaml --rows configs/versus/rows.yaml "${COMMON[@]}" \
    --steps 300,1200,2400 --late-from 1200 --out "$OUT/$c" --json "$OUT/$c.json"
done
# MW-Net over GCE, at 60% symmetric noise only
famus compare --config configs/versus/mlp-sym60.yaml --rows configs/versus/rows-extra.yaml "${COMMON[@]}" \
  --steps 300,1200,2400 --late-from 1200 --out "$OUT/mlp-sym60" --json "$OUT/mlp-sym60-extra.json"
# the convolutional network, 40% instance-dependent noise: ERM, SCE, MW-Net and L2R (configs/versus/rows-conv.yaml)
famus compare --config configs/versus/conv-inst40.yaml --rows configs/versus/rows-conv.yaml "${COMMON[@]}" \
  --steps 250,500,1500 --late-from 750 --out "$OUT/conv-inst40" --json "$OUT/conv-inst40.json"
# the cost column, on a quiet machine (nothing else running)
cat configs/versus/rows.yaml configs/versus/rows-extra.yaml > "$OUT/rows-all.yaml"
python3 scripts/versus_timing.py --config configs/versus/mlp-sym60.yaml --rows "$OUT/rows-all.yaml" --repeats 1 --json "$OUT/timing.json"
python3 scripts/versus_page.py "$OUT"
