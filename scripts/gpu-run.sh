#!/usr/bin/env bash
# run.sh of the GPU kit (scripts/gpu-kit.sh builds the kit and copies this file into it): on a
# machine with an NVIDIA GPU, its driver and a Python environment with CUDA 13 libraries (the
# machine's PyTorch), in about 5-8 minutes:
#   1. the device, the driver, the libraries found;
#   2. diffusers' UNet2DModel, UNet2DConditionModel and AutoencoderKL fixtures on CUDA against
#      diffusers' own float32 numbers (`adeis check --reference --device cuda`, 1e-4);
#   3. every gradient method on W2 (the MLP) and W3 (the CIFAR-10 UNet) at N = 10 and 50 on
#      CUDA: seconds per gradient and the device memory in use at its peak;
#   4. the same gradients in PyTorch on the same GPU (the machine's torch + diffusers);
# one table in $OUT/gpu-table.md, the raw JSON lines and the logs beside it.
#
# Environment: OUT (default: ./out beside this script), ADEIS_CUDA_LIBS (a folder with
# libnvrtc.so.13 and libcublas.so.13, else found in the Python environments and the usual
# places), ADEIS_CUDA_DRIVER_DIR (the folder of libcuda.so.1, else found), PYTHON (default
# python3), ADEIS_GPU_BUDGET_S (default 360: later benchmarks are skipped, and said so, once
# that much time has passed; each command has at most 150 s).
set -uo pipefail
kit=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$kit/out}
python=${PYTHON:-python3}
budget=${ADEIS_GPU_BUDGET_S:-360}
start=$(date +%s)
mkdir -p "$out/logs"
table=$out/gpu-table.md
results=$out/gpu-results.jsonl
: > "$results"

fail() { echo "run.sh: $*" >&2; echo "run.sh: $*" >> "$out/logs/run.log"; exit 3; }
say() { echo "== $*"; }

# 1. The driver, the libraries, the headers NVRTC reads.
driver_dir=""
candidates="${ADEIS_CUDA_DRIVER_DIR:-}"
if [ -z "$candidates" ]; then
  candidates="$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF}' | xargs -r -n1 dirname) \
    /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/wsl/lib"
fi
for d in $candidates; do
  if [ -e "$d/libcuda.so.1" ]; then driver_dir=$d; break; fi
done
[ -n "$driver_dir" ] || fail "no NVIDIA driver: libcuda.so.1 is in none of: $(echo $candidates) \
(a GPU machine has it from its driver package; set ADEIS_CUDA_DRIVER_DIR if it is elsewhere)"

find_cuda_libs() {
  local dirs="${ADEIS_CUDA_LIBS:-}"
  if [ -z "$dirs" ]; then
    local sp
    sp=$("$python" -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null)
    dirs=$(for p in $sp; do [ -d "$p/nvidia" ] && find "$p/nvidia" -maxdepth 3 -name 'libnvrtc.so.13*' -printf '%h\n'; done 2>/dev/null | sort -u)
    dirs="$dirs $(ls -d /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib 2>/dev/null) /usr/lib/x86_64-linux-gnu"
  fi
  echo $dirs
}
lib_dirs=""
for lib in libnvrtc.so.13 libcublas.so.13 libcublasLt.so.13; do
  found=""
  for d in $(find_cuda_libs); do
    if [ -e "$d/$lib" ]; then found=$d; break; fi
    # cuBLAS sits in its own wheel folder beside NVRTC's in the CUDA 12-style layout.
    alt=$(find "$d/.." -maxdepth 3 -name "$lib" -printf '%h\n' 2>/dev/null | head -n 1)
    if [ -n "$alt" ]; then found=$alt; break; fi
  done
  [ -n "$found" ] || fail "no $lib (CUDA 13) in: $(find_cuda_libs) (install a CUDA 13 PyTorch, or set ADEIS_CUDA_LIBS to a folder holding it)"
  case " $lib_dirs " in *" $found "*) ;; *) lib_dirs="$lib_dirs $found" ;; esac
done
export LD_LIBRARY_PATH="$(echo $lib_dirs | tr ' ' ':'):$driver_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# dfdx compiles some kernels with NVRTC at run time, including headers from two absolute
# paths baked into the binary; put the kit's copies there (unless the build's own are).
# shellcheck disable=SC1091
. "$kit/baked/paths.env"
restore() { # from to probe
  if [ ! -e "$2/$3" ]; then
    mkdir -p "$2" && cp -R "$1"/. "$2"/ || fail "cannot write the NVRTC headers to $2 (dfdx reads them there)"
  fi
}
restore "$kit/baked/cuda-include" "$CUDA_INCLUDE_DIR" cuda_fp16.h
restore "$kit/baked/dfdx-out" "$DFDX_OUT_DIR" cuda_utils.cuh

missing=$(ldd "$kit/bin/adeis-cuda" 2>&1 | grep "not found")
[ -z "$missing" ] || fail "the binary's libraries are not all found: $missing"

say "kit: $(head -n 1 "$kit/VERSION"); $(tail -n 1 "$kit/VERSION")"
say "driver: $driver_dir/libcuda.so.1; CUDA libraries: $lib_dirs"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | tee "$out/logs/device.txt"
else
  echo "(no nvidia-smi on PATH)" | tee "$out/logs/device.txt"
fi
"$python" "$kit/nvrtc-check.py" "$(echo $lib_dirs | cut -d' ' -f1)/libnvrtc.so.13" "$CUDA_INCLUDE_DIR" "$DFDX_OUT_DIR" \
  || fail "NVRTC cannot compile dfdx's run-time kernels here (above)"

# The device memory in use, sampled every 100 ms while a command runs; its peak less the
# memory in use before it (other processes') is the command's.
used_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1; }
with_peak() { # log json command...: runs it, its stdout to json; sets $peak_mib
  local log=$1 json=$2; shift 2
  local before; before=$(used_mib)
  local trace=$out/logs/mem.$$ sampler=""
  if [ -n "$before" ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$trace" 2>/dev/null &
    sampler=$!
  fi
  timeout 150 "$@" > "$json" 2> "$log"
  local rc=$?
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    peak_mib=$(sort -n "$trace" | tail -n 1); peak_mib=$(( ${peak_mib:-$before} - before ))
  else
    peak_mib="-"
  fi
  rm -f "$trace"
  return $rc
}
elapsed() { echo $(( $(date +%s) - start )); }
# A failed command's message: adeis's `error:` line, a panic's message, or the last line.
why() {
  local m
  m=$(grep -m1 "^error" "$1") || m=$(grep -m1 -A1 "panicked at" "$1" | tail -n 1) || m=$(grep -v '^\s*$' "$1" | tail -n 1)
  echo "$m" | cut -c1-160
}

# 2. The fixtures on CUDA.
{
  echo "# adeis on $(cat "$out/logs/device.txt")"
  echo
  echo "$(head -n 1 "$kit/VERSION"); $(tail -n 1 "$kit/VERSION"); $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo "## diffusers' UNets and VAEs on CUDA against diffusers' float32 numbers (forward, VJPs w.r.t. the inputs, the conditioning, parameters)"
  echo
  echo "| fixture | quantities | largest error | within 1e-4 |"
  echo "|---|---|---|---|"
} > "$table"
say "diffusers fixtures on CUDA"
first_error=""
for ref in "$kit"/fixtures/tests/fixtures/*/*/reference.safetensors; do
  dir=$(dirname "$ref"); name=${dir#"$kit"/fixtures/tests/fixtures/}
  log=$out/logs/check.${name//\//.}.log
  if line=$(timeout 90 "$kit/bin/adeis" check --model "diffusers:$dir" --reference "$ref" --device cuda 2> "$log" | tee -a "$log" | tail -n 1); then
    ok=yes
  else
    ok=no
    [ -n "$first_error" ] || first_error=$(head -n 20 "$log")
  fi
  n=$(echo "$line" | sed -n 's/.*: \([0-9]*\) quantities.*/\1/p')
  worst=$(echo "$line" | sed -n 's/.*largest error \([^ ]*\) (\(.*\)).*/\1 (\2)/p')
  echo "| $name | ${n:--} | ${worst:-$(why "$log")} | $ok |" >> "$table"
  echo "$name: ${worst:-failed} $ok"
  # adeis could not open the GPU at all: nothing after this can run.
  if grep -q "no CUDA GPU could be opened" "$log"; then
    cat "$log" >&2
    fail "adeis found no usable GPU: $(grep -o 'no CUDA GPU could be opened.*' "$log" | head -n 1)"
  fi
done

# 3 and 4. The gradients, adeis then PyTorch, for each workload and N.
{
  echo
  echo "## Gradients on CUDA: adeis and PyTorch on the same GPU"
  echo
  echo "W2: the MLP (D 784, H 2048, batch 64), gradient w.r.t. x_T, z and the parameters; W3: the CIFAR-10 UNet2DModel (35.7M parameters), 3x32x32, gradient w.r.t. x_T; DDIM, MSE loss. After a warm-up, the median of 3 runs (W2) or one run (W3); device memory: the peak of nvidia-smi's memory.used (sampled every 100 ms) less what was in use before. adeis / floor: the gradient's time over its floor, the NFE forward passes and VJPs it makes timed alone (what the method adds beyond the network)."
  echo
  echo "| workload | method | N | adeis s | adeis / floor | adeis device MiB | PyTorch s | PyTorch device MiB (peak allocated) | adeis / PyTorch |"
  echo "|---|---|---|---|---|---|---|---|---|"
} >> "$table"
say "gradients on CUDA"
declare -A torch_s torch_mib
# PyTorch's side needs the machine's torch (with CUDA) and diffusers: without them
# bench-torch.py would try to install them, and there is no network.
torch_ok=$("$python" -c 'import torch, diffusers, safetensors; print(torch.__version__ if torch.cuda.is_available() else "")' 2> "$out/logs/torch-import.log")
[ -n "$torch_ok" ] || echo "PyTorch's side skipped: $python has no CUDA torch with diffusers ($(tail -n 1 "$out/logs/torch-import.log"))" | tee -a "$out/logs/run.log"
for w in w2 w3; do
  repeat=3; [ "$w" = w3 ] && repeat=1
  for n in 10 50; do
    # PyTorch's side first (its methods: sample, the recorded-states adjoint, the tape).
    for m in sample discrete tape; do
      [ -n "$torch_ok" ] || continue
      [ "$(elapsed)" -le "$budget" ] || continue
      log=$out/logs/torch.$w.$m.$n.log
      if json=$(timeout 150 "$python" "$kit/torch/bench-torch.py" --device cuda --workload "$w" --method "$m" --steps "$n" --repeat "$repeat" 2> "$log"); then
        echo "$json" >> "$results"
        torch_s[$w.$m.$n]=$(echo "$json" | "$python" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["seconds"])')
        torch_mib[$w.$m.$n]=$(echo "$json" | "$python" -c 'import json,sys; print("%.0f" % (json.load(sys.stdin)["device_peak_memory_bytes"] / 2**20))')
      else
        torch_s[$w.$m.$n]="failed: $(why "$log")"; torch_mib[$w.$m.$n]="-"
      fi
    done
    for spec in "sample 1" "discrete 1" "adjoint_deis 1" "adjoint_deis 2" "tape 1" "reversible 1"; do
      set -- $spec
      m=$1; order=$2
      label=$m; [ "$m" = adjoint_deis ] && label="adjoint_deis-$order"
      if [ "$(elapsed)" -gt "$budget" ]; then
        echo "| $w | $label | $n | skipped: the $budget s budget was spent | | | | | |" >> "$table"
        continue
      fi
      log=$out/logs/adeis.$w.$label.$n.log
      if with_peak "$log" "$out/logs/last.json" "$kit/bin/adeis" bench --device cuda --workload "$w" --method "$m" --order "$order" --steps "$n" --repeat "$repeat" --json; then
        json=$(cat "$out/logs/last.json")
        echo "$json" >> "$results"
        s=$(echo "$json" | "$python" -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["seconds"])')
        floor=$(echo "$json" | "$python" -c 'import json,sys; r = json.load(sys.stdin); print("%.2f (forward %.2f ms, VJP %.2f ms)" % (r["ratio"], 1e3 * r["forward_seconds"], 1e3 * r["vjp_seconds"]))')
      else
        s="failed: $(why "$log")"; peak_mib="-"; floor="-"
        [ -n "$first_error" ] || first_error=$(head -n 20 "$log")
      fi
      ts=${torch_s[$w.$m.$n]:-}; tm=${torch_mib[$w.$m.$n]:-}
      ratio=""
      case "$s$ts" in *failed*) ;; *) [ -n "$ts" ] && ratio=$(awk -v a="$s" -v b="$ts" 'BEGIN { printf "%.2f", a / b }') ;; esac
      echo "| $w | $label | $n | $s | $floor | $peak_mib | ${ts:--} | ${tm:--} | ${ratio:--} |" >> "$table"
      echo "$w $label N=$n: adeis $s s ($peak_mib MiB), PyTorch ${ts:--} s"
    done
  done
done
{
  echo
  [ -n "$torch_ok" ] && echo "PyTorch $torch_ok." || echo "PyTorch's side skipped: no CUDA torch with diffusers in $python."
  echo "Took $(elapsed) s in all."
  [ -z "$first_error" ] || { echo; echo "First failure:"; echo; echo '```'; echo "$first_error"; echo '```'; }
} >> "$table"
say "table: $table"
cat "$table"
# Anything that failed makes the run fail, after the table is written.
[ -z "$first_error" ] || exit 1
