#!/usr/bin/env bash
# The example mask-landscape study committed beside this script: Conv-6 at width 0.25 on the CIFAR-10 JPEG copy,
# 50% pruned, 5 epochs, 5 score seeds over ONE set of random weights, Edge-Popup and Biprop.
# Run from the repository root with SUPERMASK_DATA pointing at the datasets (e.g. ../shared/datasets).
set -euo pipefail
out=examples/mask_landscape
common=(width=0.25 prune_rate=0.5 epochs=5 -q)
supermask study conv6 method=edge-popup out_dir=runs/landscape/ep "${common[@]}" --score-seeds 5
supermask study conv6 method=biprop out_dir=runs/landscape/bp "${common[@]}" --score-seeds 5
supermask train conv6 method=dense width=0.25 epochs=5 out_dir=runs/landscape/dense -q --resume
supermask compare runs/landscape/ep/runs/* runs/landscape/bp/runs/* --out "$out/compare"
supermask path runs/landscape/ep/runs/edge-popup-w0-s0 runs/landscape/ep/runs/edge-popup-w0-s1 --out "$out/path"
supermask norms runs/landscape/ep/runs/edge-popup-w0-s0 --dense runs/landscape/dense --out "$out/norms_edge-popup"
supermask norms runs/landscape/bp/runs/biprop-w0-s0 --dense runs/landscape/dense --out "$out/norms_biprop"
