#!/usr/bin/env bash
# The device run behind the GPU numbers in the README: the deep-search benchmark and the quality benchmark
# on CUDA, in one call of at most ~9 minutes. Needs the wheels of torch-pruning and mlxtend in .whl/ (the
# device has no network) and writes everything under $OUT (default: ./gpu-out).
set -o pipefail
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:$PWD || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
timeout 150 python3 bench/deep_selection.py --device cuda --rows main,local,resnet18 --resnet18-steps 3 \
    2>&1 | tee "$OUT/deep_selection.txt"
timeout 360 python3 bench/quality.py --device cuda --out "$OUT/quality" --cache /tmp/qcache \
    --finetune-iterations 100 --time-budget 250 2>&1 | tee "$OUT/quality.txt"
