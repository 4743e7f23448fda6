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

// W_hh (H, H) packed for the recurrent kernels in use: for the forward pass (transposed) or
// the backward pass. packed_w_hh_size(H) elements; the packed forms can be kept and passed to
// forward and backward, which otherwise pack W_hh themselves at every call.
template <typename T>
int64_t packed_w_hh_size(int64_t H);
template <typename T>
void pack_w_hh(const T* w_hh, int64_t H, bool for_forward, T* packed);

template <typename T>
void forward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
             const T* b_ih, const T* b_hh, T* y, T* workspace,
             const T* packed_w_hh = nullptr);

template <typename T>
void backward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
              const T* y, Rows<T> grad_y, const T* grad_hn, T* grad_x, T* grad_h0,
              T* grad_w_ih, T* grad_w_hh, T* grad_b, double* grad_norms, T* workspace,
              const T* packed_w_hh = nullptr);

// The instruction set of the recurrent kernels in use: "avx512", "avx2" or "generic".
const char* isa();

}  // namespace rnnkern::cpu
