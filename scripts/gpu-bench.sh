#!/usr/bin/env bash
# Builds adeis with the real `cuda` feature (nvcc, nvidia-smi and an NVIDIA GPU needed) and runs
# workload W2 at N = 200 for each method on the GPU, printing the same table as
# scripts/bench-report.sh. If dfdx's CUDA stack fails to build or run against the installed
# toolkit, the failing command's output is what to record.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvcc --version | tail -n 2
cargo build --release --features cuda
bin=target/release/adeis
echo "| workload | method | N | s / gradient | NFE | VJP | floor s | gradient / floor | peak host MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for spec in "sample 1" "discrete 1" "adjoint_deis 1" "adjoint_deis 2" "tape 1"; do
  set -- $spec
  json=$("$bin" bench --device cuda --workload w2 --method "$1" --order "$2" --steps 200 --repeat 3 --json)
  python3 - "$json" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
m = r["method"] + (f"-{r['order']}" if r["order"] else "")
mem = r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] else float("nan")
print(f"| {r['workload']} (cuda) | {m} | {r['steps']} | {r['seconds']:.4f} | {r['nfe']} | {r['vjps']} | {r['floor_seconds']:.4f} | {r['ratio']:.3f} | {mem:.1f} |")
PY
done
