// Lets csrc/cuda/*.cu compile with g++ against ROCm/HIP-CPU, a header-only HIP runtime for
// the CPU (https://github.com/ROCm/HIP-CPU), so that the kernels run here without a GPU.
// Force-included by run.sh; HIP-CPU itself is not part of this repository.
#pragma once
#include <hip/hip_runtime.h>

#define RNNKERN_HIP_CPU 1

using cudaError_t = hipError_t;
using cudaStream_t = hipStream_t;
#define cudaSuccess hipSuccess
#define cudaGetErrorString hipGetErrorString
#define cudaGetLastError hipGetLastError
#define cudaGetDevice hipGetDevice
#define cudaSetDevice hipSetDevice
#define cudaGetDeviceCount hipGetDeviceCount
#define cudaStreamSynchronize hipStreamSynchronize

// kernel<<<grid, block, shared, stream>>>(args...)
#define RNNKERN_LAUNCH(kernel, grid, block, shared, stream, ...) \
  hipLaunchKernelGGL(kernel, grid, block, shared, stream, __VA_ARGS__)
// extern __shared__ unsigned char name[]; HIP-CPU sizes it from the launch.
#define RNNKERN_DYNAMIC_SHARED(name) HIP_DYNAMIC_SHARED(unsigned char, name)
