// The CPU backend's entry points: one layer-direction of any cell (core/recurrence.h),
// instantiated in layer.cpp for every cell of core/cells/list.h, float and double.
#pragma once

#include <cstdint>

#include "../core/cells/list.h"

namespace rnnkern::cpu {

// Workspace sizes, in elements of T.
template <typename Cell, typename T>
int64_t forward_workspace_size(const Problem& p);
template <typename Cell, typename T>
int64_t backward_workspace_size(const Problem& p, bool record_norms,
                                bool record_weight_norms = false);

template <typename Cell, typename T>
void forward(const Problem& p, const Inputs<T>& in, const Outputs<T>& out, T* workspace);

template <typename Cell, typename T>
void backward(const Problem& p, const Inputs<T>& in, const Outputs<const T>& out,
              const Gradients<T>& grads, T* workspace);

// An inference call of a whole stack (no gradient): `layers` layers of `directions`
// directions, layer k+1 reading layer k's outputs, its directions side by side; time-major,
// every sequence `steps` long, no projection.
struct Stack {
  int64_t steps = 0, batch = 0, input_size = 0, hidden_size = 0, layers = 1, directions = 1;
  Activation act = Activation::kTanh;
};

// x (T, B, I); h0 and, for a cell with two states, c0 (L·D, B, H); weights: per layer and
// direction, w_ih, w_hh, b_ih, b_hh (biases nullptr for none); y (T, B, D·H); h_n, c_n like
// h0. The workspace holds stack_workspace_size elements.
template <typename Cell, typename T>
int64_t stack_workspace_size(const Stack& s);

template <typename Cell, typename T>
void stack_forward(const Stack& s, const T* x, const T* h0, const T* c0,
                   const T* const* weights, T* y, T* h_n, T* c_n, T* workspace);

// The instruction set of the recurrent kernels in use: "avx512", "avx2" or "generic".
const char* isa();

// The FMA peak (GFLOP/s) of the kernels' instruction set on `threads` threads (OpenMP):
// independent vector FMA chains for about `seconds` (a warm-up, then the best of three runs).
template <typename T>
double fma_peak_gflops(int threads, double seconds);

}  // namespace rnnkern::cpu
