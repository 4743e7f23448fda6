// Forward and backward of one Elman RNN layer in one direction (DESIGN.md section 1).
//
// The algorithm is written once here, templated on the scalar type T and on a backend K that
// supplies the primitives (GEMM, packed recurrent step, elementwise passes). Everything is raw
// pointers to C-contiguous row-major arrays, sizes, and a caller-owned workspace.
//
// Layout: the input holds N = Σ_t rows(t) rows of width I, step after step ("packed" as in
// cuDNN and torch.nn.utils.rnn.PackedSequence). Without batch_sizes every step has `batch`
// rows and the layout is plain time-major (T, B, I).
#pragma once

#include <cstdint>
#include <cstring>

#include "cell.h"

namespace rnnkern {

struct Problem {
  int64_t steps = 0;        // T
  int64_t batch = 0;        // B: rows at the first step, rows of h0
  int64_t input_size = 0;   // I
  int64_t hidden_size = 0;  // H
  const int64_t* batch_sizes = nullptr;  // T non-increasing counts, or nullptr for `batch` each
  bool reverse = false;
  Activation act = Activation::kTanh;

  int64_t rows_at(int64_t t) const {
    if (t < 0 || t >= steps) return 0;
    return batch_sizes ? batch_sizes[t] : batch;
  }
  int64_t total_rows() const {
    if (!batch_sizes) return steps * batch;
    int64_t n = 0;
    for (int64_t t = 0; t < steps; ++t) n += batch_sizes[t];
    return n;
  }
  bool uniform() const { return rows_at(steps - 1) == batch; }
};

// Element i of a caller's array, which may start at any address.
template <typename T>
inline T element(const T* p, int64_t i) {
  T v;
  std::memcpy(&v, p + i, sizeof(T));
  return v;
}

// What the step kernel does with the accumulated product acc = A · packed:
//   kForward:  C = φ(C + acc + b)         C holds x W_ihᵀ on entry, h_t on exit; b is the
//                                         bias row (Hs argument; nullptr for none)
//   kBackward: C = (C + acc) ⊙ φ'(Hs)     C holds ∂L/∂y_t on entry, δ_t on exit
//   kBackwardRecord: as kBackward, and the sums of squares of C + acc (d_t, the whole gradient
//                    reaching h_t) go to the backend's per-row norm slots D
//   kStore:    C = acc
//   kAccumulate: C = C + acc     (the gated cells: one call per gate block of W_hh)
enum class Epilogue : int {
  kForward = 0, kBackward = 1, kStore = 2, kBackwardRecord = 3, kAccumulate = 4 };

// Calls visit(t, row_offset, rows) for every step: in the order forward() processes them
// (t ascending, or descending in reverse) when forward_order, else in the order backward() does.
template <typename F>
inline void for_each_step(const Problem& p, bool forward_order, F&& visit) {
  if (p.reverse != forward_order) {
    int64_t off = 0;
    for (int64_t t = 0; t < p.steps; ++t) {
      visit(t, off, p.rows_at(t));
      off += p.rows_at(t);
    }
  } else {
    int64_t off = p.total_rows();
    for (int64_t t = p.steps - 1; t >= 0; --t) {
      off -= p.rows_at(t);
      visit(t, off, p.rows_at(t));
    }
  }
}

// Rows never interact: row b at step t depends only on row b at the neighbouring step. So
// the time loop runs on row ranges [begin, end), one per thread (K::for_row_ranges), and
// every per-step operation is clipped to the range: visit(a, b) for [lo, hi) ∩ [begin, end).
struct RowRange {
  int64_t begin, end;
  template <typename F>
  void clip(int64_t lo, int64_t hi, F&& visit) const {
    lo = lo > begin ? lo : begin;
    hi = hi < end ? hi : end;
    if (hi > lo) visit(lo, hi);
  }
};

// N rows of H values, element (r, j) at data[r · row_stride + j · col_stride]: C-contiguous
// rows are {data, H, 1}; a value broadcast to every element (∂L/∂y of L = y.sum()) is
// {data, 0, 0}. data == nullptr means all zeros.
template <typename T>
struct Rows {
  const T* data = nullptr;
  int64_t row_stride = 0, col_stride = 1;
};

template <typename T, typename K>
int64_t forward_workspace_size(const Problem& p, const K&) {
  return K::packed_size(p.hidden_size) + p.hidden_size;
}

template <typename T, typename K>
int64_t backward_workspace_size(const Problem& p, const K&, bool record_norms) {
  const int64_t nh = p.total_rows() * p.hidden_size;
  const int64_t slots = record_norms ? p.total_rows() * K::norm_slots(p.hidden_size) : 0;
  return K::packed_size(p.hidden_size) + nh + (p.uniform() ? 0 : nh) + slots +
         p.batch * p.hidden_size;
}

// y (N, H) = the hidden state of every row at every step.
template <typename T, typename K>
void forward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
             const T* b_ih, const T* b_hh, T* y, T* workspace, K& k) {
  const int64_t H = p.hidden_size, I = p.input_size, N = p.total_rows();
  T* packed = workspace;
  k.pack(w_hh, H, /*transpose=*/true, packed);
  // b_ih + b_hh, added by the step's epilogue.
  T* bias = b_ih || b_hh ? packed + K::packed_size(H) : nullptr;
  if (bias)
    for (int64_t j = 0; j < H; ++j)
      bias[j] = (b_ih ? element(b_ih, j) : T(0)) + (b_hh ? element(b_hh, j) : T(0));

  // The input projection for all N rows at once.
  k.gemm(false, true, N, H, I, T(1), x, I, w_ih, I, T(0), y, H);

  k.for_row_ranges(p, [&](RowRange rows) {
    int64_t prev_off = -1;  // row offset of the previously processed step
    for_each_step(p, true, [&](int64_t t, int64_t off, int64_t n) {
      T* c = y + off * H;
      auto forward_rows = [&](const T* h_prev) {  // rows whose previous state is h_prev[0]
        return [&, h_prev](int64_t a, int64_t b) {
          k.step(Epilogue::kForward, p.act, b - a, H, h_prev + a * H, packed, c + a * H,
                 bias, nullptr);
        };
      };
      if (!p.reverse) {
        rows.clip(0, n, forward_rows(prev_off < 0 ? h0 : y + prev_off * H));
      } else {
        // Rows [0, m) continue from step t+1; rows [m, n) start here from h0.
        const int64_t m = p.rows_at(t + 1);
        if (prev_off >= 0) rows.clip(0, m, forward_rows(y + prev_off * H));
        rows.clip(m, n, forward_rows(h0));
      }
      prev_off = off;
    });
  });
}

// Gradients of L with respect to x, h0, W_ih, W_hh and the bias (one array: ∂b_ih = ∂b_hh).
// Each of the five outputs may be nullptr: that gradient is not computed.
// grad_y's data may be nullptr (zero); grad_hn may be nullptr (zero).
// grad_hn row b belongs to the step at which sequence b ends (its last step forward, step 0 in
// reverse). grad_norms, if not nullptr, receives ‖d_t‖₂ for each of the N rows, where
// d_t = ∂L/∂y_t + the recurrent gradient is the whole gradient that reaches h_t; it is
// summed up in the same pass.
template <typename T, typename K>
void backward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
              const T* y, Rows<T> grad_y, const T* grad_hn, T* grad_x, T* grad_h0,
              T* grad_w_ih, T* grad_w_hh, T* grad_b, double* grad_norms, T* workspace, K& k) {
  const int64_t H = p.hidden_size, I = p.input_size, N = p.total_rows(), B = p.batch;
  T* packed = workspace;
  T* delta = packed + K::packed_size(H);
  // Partial sums of d_t² per row, norm_slots(H) of them.
  T* slots = grad_norms ? delta + N * H * (p.uniform() ? 1 : 2) : nullptr;
  // Σ_t δ_t per batch row, summed while δ_t is still in cache; ∂b is their sum.
  T* bias_rows = delta + N * H * (p.uniform() ? 1 : 2) + (slots ? N * K::norm_slots(H) : 0);
  const int64_t slots_per_row = K::norm_slots(H);
  k.pack(w_hh, H, /*transpose=*/false, packed);
  const Epilogue kRecurrent = slots ? Epilogue::kBackwardRecord : Epilogue::kBackward;
  // Rows that get no recurrent gradient at this step: δ = d ⊙ φ'(h).
  auto scale = [&](int64_t off, int64_t begin, int64_t end) {
    if (end <= begin) return;
    T* d = delta + (off + begin) * H;
    if (slots) k.row_square_sums(end - begin, H, d, slots + (off + begin) * slots_per_row);
    k.scale_by_derivative(p.act, end - begin, H, d, y + (off + begin) * H);
  };

  // δ starts as ∂L/∂y, copied in step by step just before use (still in cache when the step
  // reads it); each step then adds the recurrent gradient and applies φ'(h).
  auto load_grad_y = [&](int64_t off) {
    return [&, off](int64_t a, int64_t b) {
      T* d = delta + (off + a) * H;
      const T* g = grad_y.data + (off + a) * grad_y.row_stride;
      if (!grad_y.data) {
        std::memset(d, 0, sizeof(T) * (b - a) * H);
        return;
      }
      const int64_t col = grad_y.col_stride;
      for (int64_t r = 0; r < b - a; ++r, d += H, g += grad_y.row_stride) {
        if (col == 1) {
          std::memcpy(d, g, sizeof(T) * H);
        } else if (col == 0) {
          for (int64_t j = 0; j < H; ++j) d[j] = element(g, 0);
        } else {
          for (int64_t j = 0; j < H; ++j) d[j] = element(g, j * col);
        }
      }
    };
  };

  auto add_grad_hn = [&](int64_t off, int64_t begin, int64_t end) {
    if (!grad_hn) return;
    for (int64_t b = begin; b < end; ++b)
      for (int64_t j = 0; j < H; ++j) delta[(off + b) * H + j] += element(grad_hn, b * H + j);
  };

  auto store_grad_h0 = [&](const T* d) {  // ∂L/∂h0 rows: d W_hh for rows that began from h0
    return [&, d](int64_t a, int64_t b) {
      k.step(Epilogue::kStore, p.act, b - a, H, d + a * H, packed, grad_h0 + a * H, nullptr,
             nullptr);
    };
  };
  k.for_row_ranges(p, [&](RowRange rows) {
    if (grad_b)
      std::memset(bias_rows + rows.begin * H, 0, sizeof(T) * (rows.end - rows.begin) * H);
    int64_t prev_off = -1;  // the step processed just before (later in time, forward)
    for_each_step(p, false, [&](int64_t t, int64_t off, int64_t n) {
      T* d = delta + off * H;
      const T* h = y + off * H;
      auto recurrent = [&](int64_t a, int64_t b) {  // δ_t = (d + δ_prev W_hh) ⊙ φ'(h_t)
        k.step(kRecurrent, p.act, b - a, H, delta + prev_off * H + a * H, packed, d + a * H,
               h + a * H, slots ? slots + (off + a) * slots_per_row : nullptr);
      };
      auto ending = [&](int64_t a, int64_t b) {  // no recurrent gradient: grad_hn instead
        add_grad_hn(off, a, b);
        scale(off, a, b);
      };
      rows.clip(0, n, load_grad_y(off));
      if (!p.reverse) {
        // Rows [0, m) receive δ_{t+1} W_hh; rows [m, n) end here and receive grad_hn.
        const int64_t m = p.rows_at(t + 1);
        rows.clip(0, m, recurrent);
        rows.clip(m, n, ending);
        if (t == 0 && grad_h0) rows.clip(0, n, store_grad_h0(d));
      } else {
        // Every row continues from step t-1, except at t = 0 where all rows end.
        if (t == 0)
          rows.clip(0, n, ending);
        else
          rows.clip(0, n, recurrent);
        // Rows [m, n) started at this step from h0.
        if (grad_h0) rows.clip(p.rows_at(t + 1), n, store_grad_h0(d));
      }
      if (grad_b)
        rows.clip(0, n, [&](int64_t a, int64_t b) {
          k.accumulate((b - a) * H, d + a * H, bias_rows + a * H);
        });
      prev_off = off;
    });
  });
  if (slots) k.row_norms(N, H, slots, grad_norms);

  // Everything else: one pass over all N rows each.
  if (grad_b) k.column_sums(B, H, bias_rows, grad_b);
  if (grad_w_ih) k.gemm(true, false, H, I, N, T(1), delta, H, x, I, T(0), grad_w_ih, I);
  if (grad_x) k.gemm(false, false, N, I, H, T(1), delta, H, w_ih, I, T(0), grad_x, I);
  if (!grad_w_hh) return;

  // ∂W_hh = Σ δ_tᵀ h_{t-1}. With equal rows per step, the previous states are y shifted by
  // one step plus h0: two GEMMs, no copy. Otherwise gather them first.
  const int64_t first = p.reverse ? (p.steps - 1) * B : 0;  // rows whose previous state is h0
  if (p.uniform()) {
    k.gemm(true, false, H, H, B, T(1), delta + first * H, H, h0, H, T(0), grad_w_hh, H);
    if (p.steps > 1) {
      const T* d = p.reverse ? delta : delta + B * H;
      const T* hp = p.reverse ? y + B * H : y;
      k.gemm(true, false, H, H, (p.steps - 1) * B, T(1), d, H, hp, H, T(1), grad_w_hh, H);
    }
  } else {
    T* h_prev = delta + N * H;
    int64_t prev_off = -1;
    for_each_step(p, true, [&](int64_t t, int64_t off, int64_t n) {
      const int64_t m = p.reverse ? p.rows_at(t + 1) : (prev_off < 0 ? 0 : n);
      if (m > 0) std::memcpy(h_prev + off * H, y + prev_off * H, sizeof(T) * m * H);
      if (n > m) std::memcpy(h_prev + (off + m) * H, h0 + m * H, sizeof(T) * (n - m) * H);
      prev_off = off;
    });
    k.gemm(true, false, H, H, N, T(1), delta, H, h_prev, H, T(0), grad_w_hh, H);
  }
}

}  // namespace rnnkern
