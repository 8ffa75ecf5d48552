#!/usr/bin/env bash
# Transformer checks on one CUDA GPU: attention on the math, efficient and flash paths (exact gradients,
# q/k/v-only storage), and what a GPT-2 step holds on CUDA next to torch.cuda.max_memory_allocated.
# Prepared for a lent GPU machine; needs no data beyond what Python ships:
#
#   bash benchmarks/device/transformers_gpu.sh      (results under $OUT/transformer_memory_cuda)
#
# Sized to stay well under 10 minutes: the CUDA tests of tests/test_transformers.py and one
# benchmarks.transformer_memory run (n_embd 256, 4 layers, batch 16 x 256 bytes).
set -euo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results}
if ! python -c "import torch, transformers, peft, pytest" 2>/dev/null; then
    python -m pip install --quiet -c .ci/constraints.txt -e ".[bench,dev,hf]"
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python -m pytest -q tests/test_transformers.py -k "cuda" -rs
python -m benchmarks.transformer_memory --device cuda --embd 256 --n-layer 4 --batch 16 --tokens 256 \
    --out "$out/transformer_memory_cuda"
