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
int64_t backward_workspace_size(const Problem& p, bool record_norms);

template <typename Cell, typename T>
void forward(const Problem& p, const Inputs<T>& in, const Outputs<T>& out, T* workspace);

template <typename Cell, typename T>
void backward(const Problem& p, const Inputs<T>& in, const Outputs<const T>& out,
              const Gradients<T>& grads, T* workspace);

// The instruction set of the recurrent kernels in use: "avx512", "avx2" or "generic".
const char* isa();

}  // namespace rnnkern::cpu
