#!/usr/bin/env bash
# The serving figures of the README: MNIST adapters (four; ADAPTERS=n) on all-MiniLM-L6-v2 behind
# one `fpt serve`, then `fpt loadtest`: the same prediction requests one at a time, then from 16
# concurrent clients, then (BATCH_LINES=n) as one batch of n lines.
# The adapters are trained for a few steps only: serving speed does not depend on their accuracy.
#   bash bench/loadtest.sh [REQUESTS] [RUNS]          (after `make build`)
#   ADAPTERS=2 BATCH_LINES=20000 bash bench/loadtest.sh 20000   (the batch figure)
set -euo pipefail
cd "$(dirname "$0")/.."
FPT=${FPT:-target/release/fpt}
PY=${PY:-.venv/bin/python}
REQUESTS=${1:-400}
RUNS=${2:-1}
ADAPTERS=${ADAPTERS:-4}
BATCH_LINES=${BATCH_LINES:-0}
PORT=${PORT:-18080}
URL=http://127.0.0.1:$PORT
DATA=$(mktemp -d)

"$FPT" serve --bind 127.0.0.1:$PORT --data-dir "$DATA/data" --workers 1 >"$DATA/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null; rm -rf "$DATA"' EXIT
until curl -fs "$URL/ready" >/dev/null; do sleep 0.2; done

json() { "$PY" -c "import json,sys; print(json.load(sys.stdin)$1)"; }

tar -C datasets/mnist -cf "$DATA/mnist.tar" train-images-idx3-ubyte train-labels-idx1-ubyte
FILE=$(curl -fs -F purpose=fine-tune -F file=@"$DATA/mnist.tar" "$URL/v1/files" | json "['id']")
MODELS=()
for seed in $(seq 0 $((ADAPTERS - 1))); do
  JOB=$(curl -fs -H 'content-type: application/json' "$URL/v1/fine_tuning/jobs" -d "{\"model\":\"all-MiniLM-L6-v2\",
    \"task\":{\"type\":\"mnist\"},\"training_file\":\"$FILE\",\"seed\":$seed,
    \"hyperparameters\":{\"n_steps\":10,\"eval_every\":10,\"batch_size\":8,\"validation_fraction\":0.02}}" | json "['id']")
  until [ "$(curl -fs "$URL/v1/fine_tuning/jobs/$JOB" | json "['status']")" = succeeded ]; do sleep 1; done
  MODELS+=("$(curl -fs "$URL/v1/fine_tuning/jobs/$JOB" | json "['fine_tuned_model']")")
done
# One real digit, as the flat 28 x 28 pixel array the API takes.
SAMPLE=$("$PY" -c "
d = open('datasets/mnist/test-images-idx3-ubyte', 'rb').read()[16:16 + 784]
print(list(d))")
LIST=$(IFS=,; echo "${MODELS[*]}")
for _ in $(seq "$RUNS"); do
  before=$(curl -fs "$URL/metrics" | awk '/^fpt_predictions_batch(es|_rows)_total/ {printf "%s ", $2}')
  "$FPT" loadtest --url "$URL" --models "$LIST" --sample "$SAMPLE" --requests "$REQUESTS" --concurrency 16 \
    --batch-lines "$BATCH_LINES" --max-seconds 900
  after=$(curl -fs "$URL/metrics" | awk '/^fpt_predictions_batch(es|_rows)_total/ {printf "%s ", $2}')
  "$PY" -c "b, a = [float(x) for x in '$before'.split()], [float(x) for x in '$after'.split()]
print(f'mean rows per forward pass over both phases: {(a[1] - b[1]) / (a[0] - b[0]):.2f}')"
done
