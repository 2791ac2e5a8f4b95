#!/usr/bin/env bash
# wgnn-serve end to end: a model repository (the digits CNN trained for 2 epochs, and a language
# model if one is given), the server started on a loopback port, tritonclient's HTTP client against
# it (binary tensors and JSON), its /metrics parsed by `prometheus_client`, then SIGTERM: the server
# must drain and exit 0. Run from the repository root after
# `pip install "tritonclient[http]" prometheus_client`. Builds with the test profile, so after
# `cargo test` and `cargo test --features serve` nothing is compiled again.
#   bash tests/oip/run.sh WORKDIR [LANGUAGE_MODEL.safetensors]
set -euo pipefail
work="$1"
lm="${2:-}"
port="${WGNN_SERVE_PORT:-18765}"
repo="$work/models"
mkdir -p "$repo/digits/1"
cargo run -q --profile test --example train_digits -- --epochs 2 --out "$work/digits"
cp "$work/digits/digits_cnn.safetensors" "$repo/digits/1/model.safetensors"
if [ -n "$lm" ]; then
  mkdir -p "$repo/shakespeare/1"
  cp "$lm" "$repo/shakespeare/1/model.safetensors"
fi
cargo run -q --profile test --example predict_json -- "$repo/digits/1/model.safetensors" "$work/expected.json"
# With --test serve, the features resolve as for the tests, so the binary `cargo test --features
# serve` already built is reused (alone, --bin would build the library again).
cargo build -q --profile test --features "${WGNN_FEATURES:-serve}" --bin wgnn-serve --test serve
target/debug/wgnn-serve --model-repository "$repo" --bind "127.0.0.1:$port" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null; then break; fi
  sleep 0.2
done
python3 tests/oip/tritonclient_check.py "127.0.0.1:$port" digits "$work/expected.json"
if [ -n "$lm" ]; then
  curl -sf -X POST "http://127.0.0.1:$port/v2/models/shakespeare/generate" \
    -d '{"text_input": "ROMEO.\n", "parameters": {"max_tokens": 40, "temperature": 0.8, "seed": 1}}'
  echo
fi
# The metrics as a Prometheus client library parses them: no untyped series.
curl -sf "http://127.0.0.1:$port/metrics" > "$work/metrics.txt"
python3 tests/oip/metrics_check.py "$work/metrics.txt"
grep -E '^wgnn_requests_total' "$work/metrics.txt" | head -5
kill -TERM "$server"
wait "$server"
trap - EXIT
echo "wgnn-serve: drained and exited 0"
