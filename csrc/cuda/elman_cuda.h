// The two sequential loops of one Elman layer-direction on an NVIDIA GPU (docs/design.md, 4).
// Everything else (the input projection, the weight and input gradients, the bias sums) is
// done by the caller with its own GEMMs. Plain C++: no CUDA or Python types, so that the
// binding file compiles with the host compiler.
//
// Pointers are device pointers to C-contiguous row-major arrays; `stream` is a cudaStream_t
// as an integer. The functions set `device` for the call (and restore the previous one),
// launch one kernel on `stream` and return: they never allocate and never synchronise.
#pragma once

#include <cstdint>

#include "../core/math.h"

namespace rnnkern {
namespace cuda {

struct Loop {
  int64_t steps = 0;        // T
  int64_t batch = 0;        // B: rows at the first step, rows of h0
  int64_t hidden = 0;       // H
  int64_t total_rows = 0;   // N = Σ_t rows at step t (T·B without batch_sizes)
  const int64_t* batch_sizes = nullptr;  // device array of T non-increasing counts, or nullptr
  bool reverse = false;
  Activation act = Activation::kTanh;
};

// y[r] = φ(y[r] + h_prev[r] · W_hhᵀ) for every row r in step order: y holds x·W_ihᵀ + b_ih + b_hh
// on entry and the hidden states on exit. w_hh_t is W_hhᵀ (H, H); h0 is (B, H).
template <typename T>
void forward_loop(int device, std::uintptr_t stream, const Loop& loop, const T* w_hh_t,
                  const T* h0, T* y);

// delta[r] = δ_t = (∂L/∂y_t + δ_{t+1} W_hh) ⊙ φ'(h_t) for every row, walking back in time.
// grad_y (N, H) and grad_hn (B, H) may be nullptr (zero). grad_h0 (B, H) receives ∂L/∂h0 when
// not nullptr; norms (N,) receives ‖∂L/∂y_t + δ_{t+1} W_hh‖₂ per row when not nullptr.
template <typename T>
void backward_loop(int device, std::uintptr_t stream, const Loop& loop, const T* w_hh,
                   const T* y, const T* grad_y, const T* grad_hn, T* delta, T* grad_h0,
                   double* norms);

int device_count();                 // 0 when there is no driver or no GPU
void stream_synchronize(int device, std::uintptr_t stream);  // for tests and benchmarks

}  // namespace cuda
}  // namespace rnnkern
