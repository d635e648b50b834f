#!/usr/bin/env bash
# The GPU table of docs/performance.md: ours against the PyTorch + transformers reference at batch 16
# and 64 (bf16 and fp32), on a machine with torch 2.11 (CUDA) but no registries. Run from the repo
# root with the stripped release binary carried as bench/fpt; results land in $OUT (or bench/out).
set -euo pipefail
PY=${FPT_PYTHON:-/opt/torch/.venv/bin/python}
TORCH_LIB=$("$PY" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
OUT=${OUT:-bench/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
# transformers is not in the GPU image: use the pruned copy carried beside this script if needed.
if ! "$PY" -c 'import transformers' 2>/dev/null; then
  mkdir -p /tmp/pylib && tar -xJf bench/pylib.tar.xz -C /tmp/pylib
  export PYTHONPATH=/tmp/pylib
fi
"$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())'
for b in 16 64; do
  timeout 200 ./bench/fpt bench --device cuda --batch "$b" --threads 16 --python "$PY" --out-dir "$OUT/batch$b" \
    --rounds 1 --precisions bf16 --cases tiny,gpt2-mnist,gpt2-cifar10,minilm 2>&1 | tee "$OUT/batch$b.txt" || true
done
