// Forward and backward of one layer in one direction, for every cell (docs/design.md sections 1
// and 1b): ONE walk over the steps, templated on a cell policy (core/cells/), the scalar type T
// and a backend K that supplies the primitives (GEMM, packed recurrent step, the policy's
// pointwise passes, row ranges). Raw pointers to C-contiguous row-major arrays, sizes, and a
// caller-owned workspace.
//
// The walk: the input projection x W_ihᵀ for all N rows in one GEMM; then per row range
// (one per thread), step by step, the policy's step on each row's previous state. Backward:
// step by step in the other order, the policy's hooks for the rows that continue from the
// next step, the rows that end here, every row's pointwise pass with its previous state, and
// the rows that began from h0; then ∂W_ih, ∂x and the bias sums as one pass over all rows per
// gate block, and the policy's own weight gradients (core/problem.h has the dense ∂W_hh).
//
// A cell policy C provides:
//   kName, kGates (G), kStates (1: h; 2: h and c), kNonlinearity (takes tanh / relu),
//   kProjection (takes w_hr, the LSTM's proj_size), kWhhDims (2: w_hh (G·H, H or P);
//   1: (G·H,)), kSavedCount and kSaved: what forward saves for backward besides y
//   C::Forward<T, K>:  workspace_size(p); a constructor (p, inputs, outputs, workspace, k);
//                      projection(): where x W_ihᵀ (N, G·H) goes; c(): the saved c (or
//                      nullptr); row_align(); step(off, a, b, h_prev, c_prev) for rows [a, b)
//   C::Backward<T, K>: workspace_size(p, norms); a constructor (p, inputs, outputs, grads,
//                      workspace, k); c(); row_align(); begin(range); continuing(off,
//                      prev_off, a, b); ending(off, a, b); pointwise(off, a, b, h_prev,
//                      c_prev); initial(off, a, b); input_delta(q) and hidden_delta(q): δ's
//                      (N, H) planes for W_ih's and W_hh's block q; bias_gradient(plane, out);
//                      finish(): the gradient norms and the recurrent weights' gradients
//   and, where its step has a pointwise pass of its own, ForwardPass<T> / BackwardPass<T>
//   (the pass's arguments) and forward_pass<T, Isa> / backward_pass<T, Isa>, which the CPU
//   backend compiles once per instruction set (cpu/recurrent_kernel.h).
#pragma once

#include <cstdint>
#include <cstring>

#include "problem.h"

namespace rnnkern {

constexpr int kMaxSaved = 4;

// An array that forward saves for backward: its name, its width in units of H, and whether
// it exists only with w_hr.
struct SavedArray {
  const char* name;
  int64_t width;
  bool projection_only;
};

// How many arrays cell C saves for problem p.
template <typename C>
int saved_count(const Problem& p) {
  int n = 0;
  for (int i = 0; i < C::kSavedCount; ++i) n += !C::kSaved[i].projection_only || p.proj_size;
  return n;
}

// The arrays of one layer-direction; nullptr where a cell has none or a bias is absent.
template <typename T>
struct Inputs {
  const T *x = nullptr, *h0 = nullptr, *c0 = nullptr, *w_ih = nullptr, *w_hh = nullptr,
          *b_ih = nullptr, *b_hh = nullptr, *w_hr = nullptr;
};

// forward's outputs, backward's inputs: y (N, state_size) and the cell's saved arrays, in the
// order of C::kSaved (N rows each).
template <typename T>
struct Outputs {
  T* y = nullptr;
  T* saved[kMaxSaved] = {};
};

// backward's gradients in (grad_y; grad_hn, grad_cn (B, ·) or nullptr for zero; their rows
// belong to each sequence's last step: its last forward, step 0 in reverse) and out (nullptr:
// not computed). norm_h / norm_c get ‖∂L/∂h_t‖₂ / ‖∂L/∂c_t‖₂ of each of the N rows (the
// whole gradient that reaches the state); norm_w the T norms ‖δ_tᵀ h_{t-1}‖_F of each step's
// term of ∂L/∂W_hh (problem.h's step_weight_norms).
template <typename T>
struct Gradients {
  Rows<T> grad_y;
  const T *grad_hn = nullptr, *grad_cn = nullptr;
  T *x = nullptr, *h0 = nullptr, *c0 = nullptr, *w_ih = nullptr, *w_hh = nullptr,
    *b_ih = nullptr, *b_hh = nullptr, *w_hr = nullptr;
  double *norm_h = nullptr, *norm_c = nullptr, *norm_w = nullptr;
};

// Workspace sizes, in elements of T.
template <typename C, typename T, typename K>
int64_t forward_workspace_size(const Problem& p) {
  return C::template Forward<T, K>::workspace_size(p);
}

template <typename C, typename T, typename K>
int64_t backward_workspace_size(const Problem& p, bool record_norms,
                                bool record_weight_norms = false) {
  return C::template Backward<T, K>::workspace_size(p, record_norms) +
         (record_weight_norms ? step_weight_norms_size(p, K::threads()) : 0);
}

template <typename C, typename T, typename K>
void forward(const Problem& p, const Inputs<T>& in, const Outputs<T>& out, T* workspace,
             K& k) {
  const int64_t N = p.total_rows(), I = p.input_size, GH = C::kGates * p.hidden_size;
  typename C::template Forward<T, K> cell(p, in, out, workspace, k);
  // The input projection for all N rows at once.
  k.gemm(false, true, N, GH, I, T(1), in.x, I, in.w_ih, I, T(0), cell.projection(), GH);
  k.for_row_ranges(p, cell.row_align(), [&](RowRange rows) {
    for_each_step(p, true, [&](int64_t t, int64_t off, int64_t) {
      with_previous(p, rows, t, off, static_cast<const T*>(out.y), cell.c(), in.h0, in.c0,
                    [&](int64_t a, int64_t b, const T* h_prev, const T* c_prev) {
                      cell.step(off, a, b, h_prev, c_prev);
                    });
    });
  });
}

template <typename C, typename T, typename K>
void backward(const Problem& p, const Inputs<T>& in, const Outputs<const T>& out,
              const Gradients<T>& g, T* workspace, K& k) {
  const int64_t H = p.hidden_size, I = p.input_size, N = p.total_rows();
  typename C::template Backward<T, K> cell(p, in, out, g, workspace, k);
  k.for_row_ranges(p, cell.row_align(), [&](RowRange rows) {
    cell.begin(rows);
    int64_t prev_off = -1;  // the step processed just before (later in time, forward)
    for_each_step(p, false, [&](int64_t t, int64_t off, int64_t n) {
      const int64_t m = continuing_rows(p, t);
      rows.clip(0, m, [&](int64_t a, int64_t b) { cell.continuing(off, prev_off, a, b); });
      rows.clip(m, n, [&](int64_t a, int64_t b) { cell.ending(off, a, b); });
      with_previous(p, rows, t, off, out.y, cell.c(), in.h0, in.c0,
                    [&](int64_t a, int64_t b, const T* h_prev, const T* c_prev) {
                      cell.pointwise(off, a, b, h_prev, c_prev);
                    });
      rows.clip(initial_rows(p, t), n, [&](int64_t a, int64_t b) { cell.initial(off, a, b); });
      prev_off = off;
    });
  });

  // Everything else: one pass over all N rows each, block by block.
  for (int64_t q = 0; q < C::kGates; ++q) {
    const T* in_q = cell.input_delta(q);
    const T* hid_q = cell.hidden_delta(q);
    if (g.b_ih) cell.bias_gradient(in_q, g.b_ih + q * H);
    if (g.b_hh && g.b_ih && hid_q == in_q)  // the same sums
      std::memcpy(g.b_hh + q * H, g.b_ih + q * H, sizeof(T) * H);
    else if (g.b_hh)
      cell.bias_gradient(hid_q, g.b_hh + q * H);
    if (g.w_ih)
      k.gemm(true, false, H, I, N, T(1), in_q, H, in.x, I, T(0), g.w_ih + q * H * I, I);
    if (g.x)
      k.gemm(false, false, N, I, H, T(1), in_q, H, in.w_ih + q * H * I, I, T(q ? 1 : 0), g.x,
             I);
  }
  cell.finish();
  if (g.norm_w) {  // after the cell's workspace (backward_workspace_size)
    const T* deltas[C::kGates];
    for (int64_t q = 0; q < C::kGates; ++q) deltas[q] = cell.hidden_delta(q);
    step_weight_norms<C::kWhhDims>(
        p, k, deltas, C::kGates, H, out.y, in.h0,
        workspace + C::template Backward<T, K>::workspace_size(p, g.norm_h != nullptr), g.norm_w);
  }
}

}  // namespace rnnkern
