#!/usr/bin/env bash
# `latentforge bench` on a CUDA machine, one run per argument, each into its own JSON in OUT_DIR and all
# their output into OUT_DIR/bench.log:
#
#   benchmarks/gpu-bench.sh OUT_DIR [RUN ...]      RUN: generate-sds, generate-hifa, paint, or speed-off
#                                                  (every task with every switch off); default: all four
#
# Run from the repository's root. Wheels in .whl/ (benchmarks/fetch-gpu-wheels.sh) are installed first,
# into a folder of their own put ahead on PYTHONPATH, so the machine's own packages stay untouched.
set -euo pipefail
out=${1:?usage: benchmarks/gpu-bench.sh OUT_DIR [generate-sds|generate-hifa|paint|speed-off ...]}
shift
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(generate-sds generate-hifa paint speed-off)
mkdir -p "$out"
log="$out/bench.log"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/latentforge-site .whl/*.whl
  export PYTHONPATH="/tmp/latentforge-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# nvdiffrast compiles its plugin on first use: for this GPU only, which is much faster
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
export TORCH_CUDA_ARCH_LIST
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv >> "$log" 2>&1 || true
status=0
for run in "${runs[@]}"; do
  if [ "$run" = speed-off ]; then
    args=(--config benchmarks/speed-off.toml)
  else
    args=(--tasks "$run")
  fi
  echo "== latentforge bench --device cuda ${args[*]}" | tee -a "$log"
  # a failed run is logged and the next one still runs
  if ! python3 -m backend bench --device cuda "${args[@]}" --out "$out/bench-cuda-$run.json" 2>&1 | tee -a "$log"; then
    echo "== $run failed" | tee -a "$log"
    status=1
  fi
done
exit $status
