#!/usr/bin/env bash
# The README's worked example as a race: `fpt train` and the PyTorch + transformers reference
# (bench/mnist_reference.py) on the real MNIST digits with all-MiniLM-L6-v2 and the same recipe,
# started together on this machine, one thread each, same priority, so that both see the same
# conditions. Each prints a one-line JSON summary with its held-out accuracy and wall_seconds.
#   bash bench/mnist_race.sh [SEED]        (after `make build`; about 80 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-1}
OUT=bench/out/race
mkdir -p "$OUT"
rm -rf "$OUT"/minilm-mnist.safetensors*
target/release/fpt train --model all-MiniLM-L6-v2 --task mnist \
    --train datasets/mnist/train-images-idx3-ubyte --valid datasets/mnist/test-images-idx3-ubyte \
    --steps 3000 --batch-size 32 --schedule cosine --lr 1e-3 --eval-every 500 --seed "$SEED" --threads 1 --quiet \
    --out "$OUT/minilm-mnist.safetensors" > "$OUT/fpt.json" &
.venv/bin/python bench/mnist_reference.py --seed "$SEED" --threads 1 > "$OUT/ref.json" 2> "$OUT/ref.err" &
wait
echo "fpt:       $(cat "$OUT/fpt.json")"
echo "reference: $(cat "$OUT/ref.json")"
