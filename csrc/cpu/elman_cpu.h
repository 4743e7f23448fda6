// The CPU backend's entry points: core/elman.h instantiated for float and double.
#pragma once

#include <cstdint>

#include "../core/elman.h"

namespace rnnkern::cpu {

// Workspace sizes, in elements of T.
template <typename T>
int64_t forward_workspace_size(const Problem& p);
template <typename T>
int64_t backward_workspace_size(const Problem& p, bool record_norms);

template <typename T>
void forward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
             const T* b_ih, const T* b_hh, T* y, T* workspace);

template <typename T>
void backward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
              const T* y, Rows<T> grad_y, const T* grad_hn, T* grad_x, T* grad_h0,
              T* grad_w_ih, T* grad_w_hh, T* grad_b, double* grad_norms, T* workspace);

// The instruction set of the recurrent kernels in use: "avx512", "avx2" or "generic".
const char* isa();

}  // namespace rnnkern::cpu
