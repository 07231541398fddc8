#!/usr/bin/env bash
# Regenerates the benchmark tables of the README: every figure comes from `adeis bench`, one
# process per row (so "peak memory" is that run's own). Usage:
#   scripts/bench-report.sh [quick|full]      (quick: W1 only; full: W1 and W2)
#   scripts/bench-report.sh w3|torch|w4 [ROUNDS] (against PyTorch, see below)
#   scripts/bench-report.sh reversible [w3]   (the gradient methods on Rex: W1 and W2 at
#                                              N = 10, 50, 200; with w3, W3 at N = 10, 50, 200
#                                              too, the tape to N = 50; reversible-w3: W3 only)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/adeis
mode=${1:-quick}

# Side by side with PyTorch (+ diffusers for W3) computing the same gradients
# (scripts/bench-torch.py; it installs torch into a throwaway environment when the Python it
# runs on has none; ADEIS_TORCH_PYTHON picks that Python). One process per figure, in
# alternating rounds (adeis first in odd rounds, PyTorch first in even ones); the table gives
# each figure's median over the rounds and the ratio of the medians.
#   w3 [ROUNDS]:    W3 at N = 10 and 50 (the real-networks table)
#   torch [ROUNDS]: W1 at N = 200, W2 at N = 50, W3 at N = 10 (the speed table)
#   w4 [ROUNDS]:    W4 (Stable Diffusion 1.5's UNet) at N = 2, 10 and 20, the discrete adjoint
#                   only, one timed run after the warm-up (a gradient takes minutes; PyTorch's
#                   tape does not fit from N = 12 on this machine)
# METHODS and REPEAT (environment) override the methods and the timed runs per figure.
side_by_side() { # rounds "workload steps"...
  local rounds=$1 py=${ADEIS_TORCH_PYTHON:-python3} out repeat=${REPEAT:-3}
  shift
  out=$(mktemp)
  for r in $(seq 1 "$rounds"); do
    for ws in "$@"; do
      local w n
      read -r w n <<<"$ws"
      for m in ${METHODS:-sample discrete tape}; do
        a() { "$bin" bench --workload "$w" --method "$m" --steps "$n" --repeat "$repeat" --json | sed 's/^/adeis /' >>"$out"; }
        t() { "$py" scripts/bench-torch.py --workload "$w" --method "$m" --steps "$n" --repeat "$repeat" | sed 's/^/torch /' >>"$out"; }
        if [ $((r % 2)) = 1 ]; then a; t; else t; a; fi
      done
    done
    echo "round $r of $rounds done" >&2
  done
  python3 - "$out" "$repeat" <<'PY'
import json, statistics, sys
runs, order = {}, []
for line in open(sys.argv[1]):
    who, js = line.split(" ", 1)
    r = json.loads(js)
    key = (r["workload"], r["steps"], r["method"])
    if key not in order:
        order.append(key)
    runs.setdefault(key + (who,), []).append(r)
print("| workload | method | N | adeis s | PyTorch s | adeis / PyTorch | adeis peak MiB | PyTorch peak MiB |")
print("|---|---|---|---|---|---|---|---|")
for w, n, m in order:
    a, t = runs[(w, n, m, "adeis")], runs[(w, n, m, "torch")]
    sa = statistics.median(x["seconds"] for x in a)
    st = statistics.median(x["seconds"] for x in t)
    ma = statistics.median(x["peak_memory_bytes"] for x in a) / 2**20
    mt = statistics.median(x["peak_memory_bytes"] for x in t) / 2**20
    print(f"| {w} | {m} | {n} | {sa:.4f} | {st:.4f} | {sa / st:.2f} | {ma:.0f} | {mt:.0f} |")
t = next(v for k, v in runs.items() if k[3] == "torch")[0]
rounds = len(next(iter(runs.values())))
print(f"\n{rounds} alternating rounds, each figure the median of {sys.argv[2]} runs after a warm-up; PyTorch {t['torch']} on {t['threads']} threads.")
PY
  rm -f "$out"
}

case "$mode" in
  w3) side_by_side "${2:-3}" "w3 10" "w3 50"; exit 0 ;;
  torch) side_by_side "${2:-3}" "w1 200" "w2 50" "w3 10"; exit 0 ;;
  w4) METHODS=${METHODS:-discrete} REPEAT=${REPEAT:-1} side_by_side "${2:-1}" "w4 2" "w4 10" "w4 20"; exit 0 ;;
esac

# The gradient methods on one reversible sampler (Rex, Euler tableau, order 1): recorded and
# checkpointed discrete adjoint, the tape and the reversible gradient, one process per row.
rrow() { # workload method steps repeat [states]
  local json
  json=$("$bin" bench --workload "$1" --method "$2" --sampler rex --steps "$3" --repeat "$4" --states "${5:-record}" --json)
  python3 - "$json" "${5:-record}" <<'PY'
import json, sys
r = json.loads(sys.argv[1]); states = sys.argv[2]
m = r["method"] + ("" if states == "record" else f" ({states})")
mem = r["peak_memory_bytes"] / 2**20 if r["peak_memory_bytes"] else float("nan")
drift = f"{r['reconstruction']:.1e}" if r["reconstruction"] is not None else "-"
print(f"| {r['workload']} | {m} | {r['steps']} | {r['seconds']:.4f} | {r['nfe']} | {r['vjps']} | {r['ratio']:.3f} | {mem:.1f} | {drift} |")
PY
}
if [ "$mode" = reversible ] || [ "$mode" = reversible-w3 ]; then
  echo "| workload | method (sampler rex) | N | s / gradient | NFE | VJP | gradient / floor | peak MiB | x_T drift |"
  echo "|---|---|---|---|---|---|---|---|---|"
  if [ "$mode" = reversible ]; then
    for w in w1 w2; do
      for n in 10 50 200; do
        rrow $w discrete $n 3
        rrow $w discrete $n 3 checkpoint
        rrow $w tape $n 3
        rrow $w reversible $n 3
      done
    done
  fi
  if [ "$mode" = reversible-w3 ] || [ "${2:-}" = w3 ]; then
    for n in 10 50 200; do
      rrow w3 discrete $n 1
      rrow w3 discrete $n 1 checkpoint
      # The tape keeps every evaluation's activations, about 40 MiB each on W3: 16 GiB at
      # N = 200, two thirds of this shared 24 GiB machine, so it stops at N = 50.
      if [ "$n" -le 50 ]; then rrow w3 tape $n 1; fi
      rrow w3 reversible $n 1
    done
  fi
  exit 0
fi

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
