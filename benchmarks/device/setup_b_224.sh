#!/usr/bin/env bash
# The CIFAR-10 setup-B comparison at 224 px on one CUDA GPU, with held bytes and the CUDA step peak,
# plus the per-layer and per-step cost on CUDA. Prepared for a lent GPU machine (see docs/guide/reproducing.rst):
#
#   on this machine, once:  echo /.data/ >> .git/info/exclude
#                           mkdir -p .data && tar czf .data/cifar10.tgz -C ../shared/data cifar10
#   on the GPU machine:     bash benchmarks/device/setup_b_224.sh resnet18      (carry .data; results under $OUT)
#                           bash benchmarks/device/setup_b_224.sh mobilenet_v2
#                           bash benchmarks/device/setup_b_224.sh step_cost
#
# One model per call: each is sized to stay under 10 minutes of GPU time (10,000 pretraining and 10,000
# fine-tuning images, 5 pretraining and 2 fine-tuning epochs, 2,000 test images, last 2 and 4 layers,
# eps 0.8 and 0.9). Results land in $OUT/<run-name>/ and are committed under benchmarks/results/.
set -euo pipefail
export PYTHONUNBUFFERED=1
what=${1:?usage: setup_b_224.sh resnet18|mobilenet_v2|step_cost}
out=${OUT:-benchmarks/results}
if ! python -c "import torch, torchvision, tensorly, sklearn, tqdm, matplotlib" 2>/dev/null; then
    python -m pip install --quiet -c .ci/constraints.txt -e ".[bench]"
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
data=/tmp/data
if [ ! -d "$data/cifar10" ]; then
    mkdir -p "$data" && tar xzf .data/cifar10.tgz -C "$data"
fi
case "$what" in
    resnet18|mobilenet_v2)
        python -m benchmarks.compare --dataset cifar10 --data-root "$data/cifar10" --model "$what" --image-size 224 \
            --limit-train 20000 --limit-test 2000 --pretrain-epochs 5 --epochs 2 --layers 2 4 --eps 0.8 0.9 \
            --methods vanilla svd hosvd gradfilter_r2 quant4 checkpoint quant8_all quant4_all save_on_cpu \
            --device cuda --no-progress --out "$out" --run-name "compare-cifar10-$what-224-cuda" \
            --note "CUDA run: 20,000 CIFAR-10 training images (about 10,000 pretraining / 10,000 fine-tuning), 2,000 test images, 224x224 inputs upsampled from 32x32, 5 pretraining epochs from random init and 2 fine-tuning epochs"
        ;;
    step_cost)
        python -m benchmarks.step_cost --device cuda --data-root "$data/cifar10" --out "$out/step_cost_cuda"
        ;;
    *)
        echo "unknown: $what (resnet18, mobilenet_v2 or step_cost)" >&2
        exit 2
        ;;
esac
