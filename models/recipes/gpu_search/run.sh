#!/bin/bash
# GPU search for the face recipe: label-mix weight and capacity, selection split only (PublicTest is not carried).
set -u
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, cv2, numpy; print('torch', torch.__version__, torch.cuda.is_available(), 'cv2', cv2.__version__)"
python3 .gpu/unpack.py || exit 1
mkdir -p /tmp/runs
run() {  # name, then recipe flags
  local name=$1; shift
  timeout 430 python3 models/recipes/ferplus_cnn.py --device cuda --threads 2 --train-only \
    --work .cache/ferplus_cnn --log /tmp/runs/$name --data /nonexistent "$@" > /tmp/runs/$name.out 2>&1 &
}
run a0   --arch vgg --width 32
run a15  --arch vgg --width 32 --fer2013-weight 0.15
run a30  --arch vgg --width 32 --fer2013-weight 0.3
run a50  --arch vgg --width 32 --fer2013-weight 0.5
run w48  --arch vgg --width 48
run w48a30 --arch vgg --width 48 --fer2013-weight 0.3
run r32a30 --arch resnet --width 32 --fer2013-weight 0.3
run a30e40 --arch vgg --width 32 --fer2013-weight 0.3 --epochs 40
sleep 60; tail -n 2 /tmp/runs/*.out; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
tail -n 4 /tmp/runs/*.out
tar czf $OUT/runs.tgz -C /tmp runs
