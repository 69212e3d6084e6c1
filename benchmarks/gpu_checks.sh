#!/usr/bin/env bash
# The GPU run of docs/results.md ("On a GPU"), on any CUDA machine: CUDA against the committed
# CPU values, then BIGRec on every training sample, then benchmarks/run_gpu.sh. Needs the
# weak BIGRec of "Memory at power" in runs/bigrec-l15-32 (automr finetune --data runs/data
# --out runs/bigrec-l15-32 --lora-from-layer 15 --train-samples 32 --device cpu). On the lent
# H200 the fine-tune was stopped by the lease at step 1,600 of 2,172.
set -euo pipefail
cd "$(dirname "$0")/.."
R=${1:-runs/gpu}
automr data prepare ml-100k --out "$R/data"

# 1. float32 on CUDA against docs/results/automr/weak-bigrec-memory-1000.json (CPU)
automr memory build --data "$R/data" --out "$R/memory-item-l15" --encoder item \
  --store-token-states --layer 15 --device cuda --dtype float32 --quiet
automr evaluate --data "$R/data" --finetuned runs/bigrec-l15-32 --memory "$R/memory-item-l15" \
  --out "$R/weak-1000" --methods bigrec:likelihood,random:likelihood --measures likelihood \
  --samples 1000 --combiner concat --batch-size 16 --exclude-seen --device cuda \
  --dtype float32 --quiet
automr export "$R/weak-1000" "$R/weak-1000.json"

# 2. BIGRec on every training sample, one epoch, bf16 autocast; then ranked and scored
automr finetune --data "$R/data" --out "$R/bigrec-full" --lora-from-layer 15 --train-samples 0 \
  --valid-samples 512 --batch-size 32 --eval-every 200 --patience 4 --lr 1e-3 --device cuda \
  --dtype float32 --autocast bf16 --no-cache-lower --quiet
automr evaluate --data "$R/data" --finetuned "$R/bigrec-full" --out "$R/full-1000" \
  --methods bigrec:l2-pop,bigrec:l2 --measures ranks,likelihood --samples 1000 \
  --batch-size 32 --exclude-seen --device cuda --dtype float32 --quiet
automr export "$R/full-1000" "$R/full-1000.json"

# 3. throughput
benchmarks/run_gpu.sh "$R/data"
