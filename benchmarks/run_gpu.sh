#!/usr/bin/env bash
# CUDA benchmarks of the embedded default (bf16: --dtype auto on CUDA); results in
# benchmarks/results/*-cuda.*. The figures there came from these commands on one H200
# (docs/results.md, "On a GPU") with the code of 4 December 2026: its annotator cached a
# one-token shared prefix (now only 8 or more, UpperAnnotator.min_shared) and its files lack
# the fields added since (benchmarks/README.md). Ratios: interleaved rounds after a warm-up,
# median [min, max].
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-runs/ml-100k}
[ -f "$data/stats.json" ] || automr data prepare ml-100k --out "$data"
automr bench encode --device cuda --data "$data"
automr bench encode --device cuda --data "$data" --texts 512 --batch-size 64 \
  --out benchmarks/results/large
automr bench annotate --device cuda --combiner concat --element-subset 16 --repeats 2
automr bench finetune --device cuda --data "$data"
automr bench ground --device cuda --data "$data" --grounders constrained,l2
# the shared paths at 135M, 1.1B and 7B parameters (random weights; results/model-size-cuda.*)
python benchmarks/model_size.py --data "$data" --device cuda
