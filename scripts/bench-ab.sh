#!/usr/bin/env bash
# Two builds of `adeis` side by side on the same benchmark rows, in alternating rounds (A B, then
# B A, ...), one process per run, so that a change's effect is measured in one run on a noisy
# machine. Prints, per row, each build's best seconds per gradient, its peak memory and the
# ratio B / A. Usage:
#   scripts/bench-ab.sh BIN_A BIN_B [rounds] [quick|full]     (default: 2 rounds, quick = W1;
#   full adds W2 and W3)
# e.g. build the commit before a change into /tmp/adeis-before and compare with target/release.
set -euo pipefail
a=$1 b=$2 rounds=${3:-2} mode=${4:-quick}

rows=(
  "w1 sample 1 20 5" "w1 discrete 1 20 5" "w1 adjoint_deis 1 20 5" "w1 adjoint_deis 2 20 5" "w1 tape 1 20 3"
  "w1 sample 1 200 3" "w1 discrete 1 200 3" "w1 adjoint_deis 1 200 3" "w1 adjoint_deis 2 200 3" "w1 tape 1 200 3"
  "w1 discrete 1 1000 1" "w1 tape 1 1000 1"
)
if [ "$mode" = full ]; then
  rows+=("w2 discrete 1 20 1" "w2 adjoint_deis 1 20 1" "w2 tape 1 20 1" "w2 discrete 1 100 1")
  rows+=("w2 sample 1 50 1" "w2 discrete 1 50 1" "w2 tape 1 50 1")
  rows+=("w3 sample 1 10 1" "w3 discrete 1 10 1" "w3 tape 1 10 1")
fi

run() { # bin workload method order steps repeat -> "seconds peak_bytes"
  "$1" bench --workload "$2" --method "$3" --order "$4" --steps "$5" --repeat "$6" --json |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print(r["seconds"], r["peak_memory_bytes"] or 0)'
}

echo "| workload | method | N | A s / gradient | B s / gradient | B / A | A peak MiB | B peak MiB |"
echo "|---|---|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
  read -r w m o n rep <<<"$row"
  ta=() tb=() ma=0 mb=0
  for ((k = 0; k < rounds; k++)); do
    if ((k % 2 == 0)); then order=("$a" "$b"); else order=("$b" "$a"); fi
    for bin in "${order[@]}"; do
      read -r s mem < <(run "$bin" "$w" "$m" "$o" "$n" "$rep")
      if [ "$bin" = "$a" ]; then ta+=("$s"); ma=$mem; else tb+=("$s"); mb=$mem; fi
    done
  done
  python3 - "$w" "$m" "$o" "$n" "${ta[*]}" "${tb[*]}" "$ma" "$mb" <<'PY'
import sys
w, m, o, n, ta, tb, ma, mb = sys.argv[1:]
name = m + (f"-{o}" if m == "adjoint_deis" else "")
a, b = min(map(float, ta.split())), min(map(float, tb.split()))
print(f"| {w} | {name} | {n} | {a:.4f} | {b:.4f} | {b / a:.3f} | {int(ma) / 2**20:.1f} | {int(mb) / 2**20:.1f} |")
PY
done
