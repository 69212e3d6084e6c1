#!/usr/bin/env bash
# CPU benchmarks of the embedded default; results in benchmarks/results/. The options are the
# ones that made the committed *-cpu.* files (one thread each; README.md says which files came
# from older versions of the code). Every comparison interleaves its ways over --repeats rounds
# (default 3) after a warm-up: median [min, max].
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-runs/ml-100k}
export OMP_NUM_THREADS=1
[ -f "$data/stats.json" ] || automr data prepare ml-100k --out "$data"
automr bench annotate --device cpu --combiner concat --element-subset 16 --repeats 2
automr bench annotate --device cpu --combiner concat --elements 30 --element-prefix 90 \
  --repeats 2 --label header
automr bench annotate --device cpu --combiner append-token
automr bench encode --device cpu --data "$data"
automr bench ground --device cpu --data "$data" --grounders constrained,l2 --repeats 2
automr bench finetune --device cpu --data "$data" --steps 4 --repeats 2
