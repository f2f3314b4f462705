#!/bin/bash
# Training-step benchmark of CLIP ViT-B/16 on one GPU, several variants in one go.
#   bash scripts/bench_gpu.sh VARIANT...   (names below; results as JSON under ${OUT:-bench_out})
# Each variant is one `python -m mmjax.tools.benchmark` run; the command it ran is printed above its table.
set -u
out=${OUT:-bench_out}
mkdir -p "$out"
declare -A VARIANTS=(
  [cudnn_b256]="--config.model.attention_implementation=cudnn"
  [xla_b256]=""
  [cudnn_b512]="--config.model.attention_implementation=cudnn --config.batch_size=512"
  [flip_b512]="--config.model.attention_implementation=cudnn --config.batch_size=512 --config.model.image_tower.patch_dropout=0.5"
)
for name in "$@"; do
  cmd="python3 -m mmjax.tools.benchmark --config=configs/clip_b16.py ${VARIANTS[$name]} --out=$out/$name.json"
  echo "== $name: ${XLA_FLAGS:+XLA_FLAGS=$XLA_FLAGS }$cmd"
  $cmd 2>&1 | grep -v "^W0000\|^I0000" | tail -22
done
