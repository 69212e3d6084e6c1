#!/usr/bin/env bash
# CPU benchmarks of the embedded default; results in benchmarks/results/. Every comparison
# interleaves its ways over --repeats rounds (default 3) after a warm-up: median [min, max].
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-runs/ml-100k}
[ -f "$data/stats.json" ] || automr data prepare ml-100k --out "$data"
automr bench annotate --device cpu --combiner concat --element-subset 16 --repeats 2
automr bench annotate --device cpu --combiner append-token
automr bench annotate --device cpu --combiner prepend-token --elements 30
automr bench encode --device cpu --data "$data"
automr bench ground --device cpu --data "$data" --grounders constrained,l2
automr bench finetune --device cpu --data "$data"
