// The CPU backend's entry points for the gated cells: core/gated.h instantiated for float and
// double (defined in elman_cpu.cpp, beside the Elman ones, on the same backend).
#pragma once

#include <cstdint>

#include "../core/gated.h"

namespace rnnkern::cpu {

// Workspace sizes, in elements of T.
template <typename T>
int64_t gated_forward_workspace_size(Cell cell, const Problem& p);
template <typename T>
int64_t gated_backward_workspace_size(Cell cell, const Problem& p);

template <typename T>
void gated_forward(Cell cell, const Problem& p, const T* x, const T* h0, const T* c0,
                   const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* y, T* gates,
                   T* state, T* workspace);

template <typename T>
void gated_backward(Cell cell, const Problem& p, const T* x, const T* h0, const T* c0,
                    const T* w_ih, const T* w_hh, const T* y, const T* gates, const T* state,
                    Rows<T> grad_y, const T* grad_hn, const T* grad_cn, T* grad_x,
                    T* grad_h0, T* grad_c0, T* grad_w_ih, T* grad_w_hh, T* grad_b_ih,
                    T* grad_b_hh, double* norm_h, double* norm_c, T* workspace);

}  // namespace rnnkern::cpu
