#!/usr/bin/env bash
# Builds rnnkern._cuda from csrc/cuda with g++ against ROCm/HIP-CPU, so that the CUDA kernels
# run on the CPU: tests/cuda/test_cuda_on_cpu.py runs them against rnnkern.reference.
#   bash tests/cuda/cuda_on_cpu/run.sh HIP_CPU_DIR [OUT_DIR]
# HIP_CPU_DIR: a checkout of https://github.com/ROCm/HIP-CPU (header-only; needs Debian's
# libtbb-dev and g++ with C++17). OUT_DIR (default build/cuda_on_cpu) receives the module.
set -euo pipefail
hip="${1:?usage: run.sh HIP_CPU_DIR [OUT_DIR]}"
root="$(cd "$(dirname "$0")/../../.." && pwd)"
out="${2:-$root/build/cuda_on_cpu}"
[ -f "$hip/include/hip/hip_runtime.h" ] || { echo "no include/hip/hip_runtime.h under $hip" >&2; exit 2; }
mkdir -p "$out"
python=${PYTHON:-python3}
suffix="$($python -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
includes="$($python -m pybind11 --includes)"
# shellcheck disable=SC2086
g++ -std=c++17 -O1 -g -fPIC -shared -w $includes -I"$hip/include" \
  -include "$root/tests/cuda/cuda_on_cpu/cuda_on_hip.h" -x c++ "$root/csrc/cuda/elman_cuda.cu" \
  -x c++ "$root/csrc/cuda/bindings.cpp" -ltbb -lpthread -o "$out/_cuda$suffix"
echo "$out/_cuda$suffix"
