#!/usr/bin/env bash
# Regenerates the benchmark tables of the README: every figure comes from `adeis bench`, one
# process per row (so "peak memory" is that run's own). Usage:
#   scripts/bench-report.sh [quick|full]      (quick: W1 only; full: W1 and W2)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/adeis
mode=${1:-quick}

row() { # workload method order steps repeat [states]
  local json
  json=$("$bin" bench --workload "$1" --method "$2" --order "$3" --steps "$4" --repeat "$5" --states "${6:-record}" --json)
  python3 - "$json" "${6:-record}" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); states = sys.argv[2]
m = r["method"] + (f"-{r['order']}" if r["order"] else "") + ("" if states == "record" else f" ({states})")
mem = r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] else float("nan")
print(f"| {r['workload']} | {m} | {r['steps']} | {r['seconds']:.4f} | {r['nfe']} | {r['vjps']} | {r['floor_seconds']:.4f} | {r['ratio']:.3f} | {mem:.1f} |")
PY
}

echo "| workload | method | N | s / gradient | NFE | VJP | floor s | gradient / floor | peak MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for n in 20 200; do
  row w1 sample 1 $n 5
  row w1 discrete 1 $n 5
  row w1 adjoint_deis 1 $n 5
  row w1 adjoint_deis 2 $n 5
  row w1 tape 1 $n 3
done
echo
echo "Memory against steps (W1, recorded states, one process per row):"
echo
echo "| workload | method | N | s / gradient | NFE | VJP | floor s | gradient / floor | peak MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
for n in 10 100 1000; do
  row w1 discrete 1 $n 1
  row w1 discrete 1 $n 1 checkpoint
  row w1 tape 1 $n 1
done
if [ "$mode" = full ]; then
  echo
  echo "| workload | method | N | s / gradient | NFE | VJP | floor s | gradient / floor | peak MiB |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for n in 20 200; do
    row w2 discrete 1 $n 1
    row w2 adjoint_deis 1 $n 1
  done
  row w2 tape 1 200 1
  for n in 10 100; do row w2 discrete 1 $n 1; done
fi
