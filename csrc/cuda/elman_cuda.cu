// Kernels v1 for the two Elman loops (docs/design.md sections 1 and 4): one launch per sequence, a
// block owns R batch rows for all steps, its threads own hidden units, h_{t-1} (or δ_{t+1}) sits
// in shared memory, and W_hh too when it fits. Only block barriers and shared memory: the same
// source also compiles with g++ and runs on the CPU under HIP-CPU (tests/cuda/cuda_on_cpu), whose
// compatibility header defines RNNKERN_HIP_CPU and the two macros below.
#if !defined(RNNKERN_HIP_CPU)
#include <cuda_runtime.h>
#define RNNKERN_LAUNCH(kernel, grid, block, shared, stream, ...) \
  kernel<<<grid, block, shared, stream>>>(__VA_ARGS__)
#define RNNKERN_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

#include <cmath>
#include <stdexcept>
#include <string>

#include "elman_cuda.h"

namespace rnnkern {
namespace cuda {
namespace {

constexpr int kMaxThreads = 256;
// Two blocks per multiprocessor: ptxas then keeps every kernel within registers (sm_100 spilled
// one of them with no minimum given).
constexpr int kMinBlocks = 2;
constexpr std::size_t kSharedBytes = 48 * 1024;  // what every block gets without an opt-in

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw std::runtime_error(std::string("rnnkern._cuda: ") + what + " failed: " +
                             cudaGetErrorString(status));
}

// The caller's device is restored on the way out.
class DeviceScope {
 public:
  explicit DeviceScope(int device) : device_(device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (previous_ != device_) check(cudaSetDevice(device_), "cudaSetDevice");
  }
  ~DeviceScope() {
    if (previous_ != device_) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int device_, previous_ = 0;
};

__device__ __forceinline__ int64_t rows_at(const Loop& p, int64_t t) {
  return p.batch_sizes ? p.batch_sizes[t] : p.batch;
}

// How many of the block's R rows (from b0) are live when n rows are.
__device__ __forceinline__ int live_rows(int64_t n, int64_t b0, int R) {
  const int64_t live = n - b0;
  return live <= 0 ? 0 : (live >= R ? R : int(live));
}

// W_hh's H·H values into shared memory at `shared` when `on`; returns where to read them.
template <typename T>
__device__ __forceinline__ const T* stage_weights(const T* w, T* shared, int64_t values,
                                                  bool on) {
  if (!on) return w;
  for (int64_t i = threadIdx.x; i < values; i += blockDim.x) shared[i] = w[i];
  return shared;
}

// dst[r][j] = src row b0 + r (H values) for the block's R rows; 0 past the batch or without src.
template <typename T, int R>
__device__ __forceinline__ void load_rows(const T* src, int64_t b0, int64_t batch, int64_t H,
                                          T* dst) {
  for (int r = 0; r < R; ++r)
    for (int64_t j = threadIdx.x; j < H; j += blockDim.x)
      dst[r * H + j] = src && b0 + r < batch ? src[(b0 + r) * H + j] : T(0);
}

// Shared memory: state[2][R][H], then W_hhᵀ (H, H) when `shared_w`.
template <typename T, int R>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks)
    forward_kernel(Loop p, const T* __restrict__ w_hh_t, const T* __restrict__ h0,
                   T* __restrict__ y, bool shared_w) {
  RNNKERN_DYNAMIC_SHARED(smem);
  const int64_t H = p.hidden;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t b0 = int64_t(blockIdx.x) * R;
  T* state = reinterpret_cast<T*>(smem);
  const T* w = stage_weights(w_hh_t, state + 2 * R * H, H * H, shared_w);
  load_rows<T, R>(h0, b0, p.batch, H, state);
  __syncthreads();

  int cur = 0;
  int64_t off = p.reverse ? p.total_rows : 0;  // first row of step t
  for (int64_t s = 0; s < p.steps; ++s) {
    const int64_t t = p.reverse ? p.steps - 1 - s : s;
    const int64_t n = rows_at(p, t);
    if (p.reverse) off -= n;
    const int live = live_rows(n, b0, R);
    if (live > 0) {
      const T* h_prev = state + cur * R * H;
      T* h_next = state + (1 - cur) * R * H;
      for (int64_t j = tid; j < H; j += nt) {
        T acc[R];
        for (int r = 0; r < R; ++r) acc[r] = T(0);
        for (int64_t k = 0; k < H; ++k) {
          const T wk = w[k * H + j];
          for (int r = 0; r < R; ++r) acc[r] += h_prev[r * H + k] * wk;
        }
        for (int r = 0; r < R; ++r) {
          if (r < live) {
            T* out = y + (off + b0 + r) * H + j;
            const T h = activation(p.act, *out + acc[r]);
            *out = h;
            h_next[r * H + j] = h;
          } else {  // not live yet (reverse): keeps h0
            h_next[r * H + j] = h_prev[r * H + j];
          }
        }
      }
      __syncthreads();
      cur ^= 1;
    } else if (!p.reverse) {
      break;  // forward, rows only drop out
    }
    if (!p.reverse) off += n;
  }
}

// Shared memory: when recording norms, part[2][R][threads] (double) first; then carry[R][H]
// (the gradient reaching h_t from later steps, each thread's own units), delta[2][R][H], and
// W_hh (H, H) when `shared_w`.
template <typename T, int R>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks)
    backward_kernel(Loop p, const T* __restrict__ w_hh, const T* __restrict__ y,
                    const T* __restrict__ grad_y, const T* __restrict__ grad_hn,
                    T* __restrict__ delta, T* __restrict__ grad_h0, double* __restrict__ norms,
                    bool shared_w) {
  RNNKERN_DYNAMIC_SHARED(smem);
  const int64_t H = p.hidden;
  const int tid = threadIdx.x, nt = blockDim.x;
  const int64_t b0 = int64_t(blockIdx.x) * R;
  double* part = reinterpret_cast<double*>(smem);
  T* carry = reinterpret_cast<T*>(smem + (norms ? 2 * R * nt * sizeof(double) : 0));
  T* deltas = carry + R * H;
  const T* w = stage_weights(w_hh, deltas + 2 * R * H, H * H, shared_w);
  load_rows<T, R>(grad_hn, b0, p.batch, H, carry);
  __syncthreads();

  int buf = 0;
  int64_t off = p.reverse ? 0 : p.total_rows;  // first row of step t
  for (int64_t s = 0; s < p.steps; ++s) {
    const int64_t t = p.reverse ? s : p.steps - 1 - s;
    const int64_t n = rows_at(p, t);
    if (!p.reverse) off -= n;
    const int live = live_rows(n, b0, R);
    if (live > 0) {
      T* d_shared = deltas + buf * R * H;
      double squares[R];
      for (int r = 0; r < R; ++r) squares[r] = 0;
      // δ_t = (∂L/∂y_t + carry) ⊙ φ'(h_t) for this thread's units.
      for (int64_t j = tid; j < H; j += nt) {
        for (int r = 0; r < R; ++r) {
          if (r < live) {
            const int64_t i = (off + b0 + r) * H + j;
            const T d = carry[r * H + j] + (grad_y ? grad_y[i] : T(0));
            squares[r] += double(d) * double(d);
            const T dl = activation_backward(p.act, d, y[i]);
            delta[i] = dl;
            d_shared[r * H + j] = dl;
          } else {
            d_shared[r * H + j] = T(0);
          }
        }
      }
      if (norms)
        for (int r = 0; r < R; ++r) part[(buf * R + r) * nt + tid] = squares[r];
      __syncthreads();
      if (norms && tid < live) {  // summed in thread order: the same result every run
        double sum = 0;
        for (int i = 0; i < nt; ++i) sum += part[(buf * R + tid) * nt + i];
        norms[off + b0 + tid] = sqrt(sum);
      }
      // carry = δ_t W_hh: the gradient that reaches h_{t-1}, for this thread's units.
      for (int64_t k = tid; k < H; k += nt) {
        T acc[R];
        for (int r = 0; r < R; ++r) acc[r] = T(0);
        for (int64_t j = 0; j < H; ++j) {
          const T wk = w[j * H + k];
          for (int r = 0; r < R; ++r) acc[r] += d_shared[r * H + j] * wk;
        }
        for (int r = 0; r < R; ++r)
          if (r < live) carry[r * H + k] = acc[r];
      }
      buf ^= 1;  // the next step writes the other delta and part buffers
    } else if (p.reverse) {
      break;  // reverse walks t upwards: rows only drop out
    }
    if (p.reverse) off += n;
  }
  // Each row's carry is now ∂L/∂h0 (its last step in the walk started from h0).
  if (grad_h0)
    for (int r = 0; r < R; ++r)
      if (b0 + r < p.batch)
        for (int64_t j = tid; j < H; j += nt) grad_h0[(b0 + r) * H + j] = carry[r * H + j];
}

struct Plan {
  int rows = 1, threads = 32;
  bool shared_w = false;
  std::size_t shared_bytes = 0;
};

// Rows per block: more rows share each read of W_hh, fewer give more blocks; up to 4 while at
// least 64 blocks remain. W_hh goes to shared memory when it fits beside the state.
template <typename T>
Plan plan(const Loop& loop, bool backward, bool record) {
  Plan pl;
  const int64_t H = loop.hidden;
  pl.threads = int(H >= kMaxThreads ? kMaxThreads : (H + 31) / 32 * 32);
  while (pl.rows < 4 && (loop.batch + 2 * pl.rows - 1) / (2 * pl.rows) >= 64) pl.rows *= 2;
  auto state_bytes = [&](int rows) {
    const std::size_t values = std::size_t(backward ? 3 : 2) * rows * H;
    return values * sizeof(T) + (record ? std::size_t(2) * rows * pl.threads * sizeof(double) : 0);
  };
  while (pl.rows > 1 && state_bytes(pl.rows) > kSharedBytes) pl.rows /= 2;
  pl.shared_bytes = state_bytes(pl.rows);
  if (pl.shared_bytes > kSharedBytes)
    throw std::invalid_argument("hidden_size " + std::to_string(H) + " is too large for the " +
                                "CUDA kernels: they need " + std::to_string(pl.shared_bytes) +
                                " bytes of shared memory, at most " +
                                std::to_string(kSharedBytes));
  const std::size_t w_bytes = std::size_t(H) * H * sizeof(T);
  pl.shared_w = pl.shared_bytes + w_bytes <= kSharedBytes;
  if (pl.shared_w) pl.shared_bytes += w_bytes;
  return pl;
}

dim3 grid_of(const Loop& loop, const Plan& pl) {
  return dim3(unsigned((loop.batch + pl.rows - 1) / pl.rows));
}

}  // namespace

template <typename T>
void forward_loop(int device, std::uintptr_t stream, const Loop& loop, const T* w_hh_t,
                  const T* h0, T* y) {
  if (loop.steps <= 0 || loop.batch <= 0 || loop.hidden <= 0) return;
  const Plan pl = plan<T>(loop, false, false);
  DeviceScope scope(device);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid = grid_of(loop, pl), block(pl.threads);
  auto k1 = forward_kernel<T, 1>;
  auto k2 = forward_kernel<T, 2>;
  auto k4 = forward_kernel<T, 4>;
  auto kernel = pl.rows == 4 ? k4 : pl.rows == 2 ? k2 : k1;
  RNNKERN_LAUNCH(kernel, grid, block, pl.shared_bytes, s, loop, w_hh_t, h0, y, pl.shared_w);
  check(cudaGetLastError(), "the forward kernel's launch");
}

template <typename T>
void backward_loop(int device, std::uintptr_t stream, const Loop& loop, const T* w_hh,
                   const T* y, const T* grad_y, const T* grad_hn, T* delta, T* grad_h0,
                   double* norms) {
  if (loop.steps <= 0 || loop.batch <= 0 || loop.hidden <= 0) return;
  const Plan pl = plan<T>(loop, true, norms != nullptr);
  DeviceScope scope(device);
  cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
  const dim3 grid = grid_of(loop, pl), block(pl.threads);
  auto k1 = backward_kernel<T, 1>;
  auto k2 = backward_kernel<T, 2>;
  auto k4 = backward_kernel<T, 4>;
  auto kernel = pl.rows == 4 ? k4 : pl.rows == 2 ? k2 : k1;
  RNNKERN_LAUNCH(kernel, grid, block, pl.shared_bytes, s, loop, w_hh, y, grad_y, grad_hn,
                 delta, grad_h0, norms, pl.shared_w);
  check(cudaGetLastError(), "the backward kernel's launch");
}

template void forward_loop<float>(int, std::uintptr_t, const Loop&, const float*, const float*,
                                  float*);
template void forward_loop<double>(int, std::uintptr_t, const Loop&, const double*,
                                   const double*, double*);
template void backward_loop<float>(int, std::uintptr_t, const Loop&, const float*,
                                   const float*, const float*, const float*, float*, float*,
                                   double*);
template void backward_loop<double>(int, std::uintptr_t, const Loop&, const double*,
                                    const double*, const double*, const double*, double*,
                                    double*, double*);

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clears the error: no driver or no device
    return 0;
  }
  return count;
}

void stream_synchronize(int device, std::uintptr_t stream) {
  DeviceScope scope(device);
  check(cudaStreamSynchronize(reinterpret_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

}  // namespace cuda
}  // namespace rnnkern
