// The sizes of one layer-direction and the walk over its steps (docs/design.md section 1), shared
// by every cell: packed rows, reverse order, row ranges, each row's previous state, and the
// recurrent weight gradient Σ δ_tᵀ h_{t-1}.
//
// Layout: the input holds N = Σ_t rows(t) rows of width I, step after step ("packed" as in
// cuDNN and torch.nn.utils.rnn.PackedSequence). Without batch_sizes every step has `batch`
// rows and the layout is plain time-major (T, B, I).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "math.h"

namespace rnnkern {

struct Problem {
  int64_t steps = 0;        // T
  int64_t batch = 0;        // B: rows at the first step, rows of h0
  int64_t input_size = 0;   // I
  int64_t hidden_size = 0;  // H
  int64_t proj_size = 0;    // P: the width of h (the LSTM's proj_size), 0 for H
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
  // Values per row of y and h0.
  int64_t state_size() const { return proj_size ? proj_size : hidden_size; }
};

// Element i of a caller's array, which may start at any address.
template <typename T>
inline T element(const T* p, int64_t i) {
  T v;
  std::memcpy(&v, p + i, sizeof(T));
  return v;
}

// What the backend's step kernel does with the accumulated product acc = A · packed:
//   kForward:  C = φ(C + acc + b)         C holds x W_ihᵀ on entry, h_t on exit; b is the
//                                         bias row (Hs argument; nullptr for none)
//   kBackward: C = (C + acc) ⊙ φ'(Hs)     C holds ∂L/∂y_t on entry, δ_t on exit
//   kBackwardRecord: as kBackward, and the sums of squares of C + acc (d_t, the whole gradient
//                    reaching h_t) go to the backend's per-row norm slots D
//   kStore:    C = acc
//   kAccumulate: C = C + acc     (one call per gate block of W_hh)
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

// Rows of step t that get a gradient from step t+1 (in time) are [0, continuing_rows); the
// others end at step t (grad_hn, grad_cn reach them there).
inline int64_t continuing_rows(const Problem& p, int64_t t) {
  if (!p.reverse) return p.rows_at(t + 1);
  return t == 0 ? 0 : p.rows_at(t);
}

// Rows of step t that start from h0 (and c0) are [initial_rows, rows_at(t)).
inline int64_t initial_rows(const Problem& p, int64_t t) {
  if (!p.reverse) return t == 0 ? 0 : p.rows_at(t);
  return p.rows_at(t + 1);
}

// Calls visit(a, b, h_prev, c_prev) for the rows [a, b) ∩ range of step t (at row offset off):
// h_prev / c_prev point at row a's previous state (y / c rows of the step before in forward
// order, or h0 / c0 for rows that start at step t). c may be nullptr (one state). Rows of y
// and h0 have p.state_size() values, rows of c and c0 H.
template <typename T, typename F>
void with_previous(const Problem& p, RowRange range, int64_t t, int64_t off, const T* y,
                   const T* c, const T* h0, const T* c0, F&& visit) {
  const int64_t H = p.hidden_size, P = p.state_size(), n = p.rows_at(t);
  auto from = [&](const T* hs, const T* cs, int64_t first) {
    return [&, hs, cs, first](int64_t a, int64_t b) {
      visit(a, b, hs + (a - first) * P, cs ? cs + (a - first) * H : nullptr);
    };
  };
  if (!p.reverse) {
    if (t == 0) {
      range.clip(0, n, from(h0, c0, 0));
    } else {
      const int64_t prev = off - p.rows_at(t - 1);
      range.clip(0, n, from(y + prev * P, c ? c + prev * H : nullptr, 0));
    }
  } else {
    const int64_t m = p.rows_at(t + 1), prev = off + n;
    if (m > 0) range.clip(0, m, from(y + prev * P, c ? c + prev * H : nullptr, 0));
    range.clip(m, n, from(h0 + m * P, c0 ? c0 + m * H : nullptr, m));
  }
}

// Rows of N × width: row r of ∂L/∂y at data[r · row_stride + j · col_stride]: C-contiguous
// rows are {data, width, 1}; a value broadcast to every element (∂L/∂y of L = y.sum()) is
// {data, 0, 0}. data == nullptr means all zeros.
template <typename T>
struct Rows {
  const T* data = nullptr;
  int64_t row_stride = 0, col_stride = 1;
};

// dst rows [0, count) (width values each, dst_stride apart) = rows first… of g, or += them when
// add (a zero g leaves dst as it is then).
template <typename T>
void load_rows(Rows<T> g, int64_t first, int64_t count, int64_t width, T* dst,
               int64_t dst_stride, bool add) {
  const int64_t col = g.col_stride;
  for (int64_t r = 0; r < count; ++r) {
    T* d = dst + r * dst_stride;
    const T* s = g.data + (first + r) * g.row_stride;
    if (!g.data) {
      if (!add) std::memset(d, 0, sizeof(T) * width);
    } else if (add) {
      for (int64_t j = 0; j < width; ++j) d[j] += element(s, j * col);
    } else if (col == 1) {
      std::memcpy(d, s, sizeof(T) * width);
    } else if (col == 0) {
      for (int64_t j = 0; j < width; ++j) d[j] = element(s, 0);
    } else {
      for (int64_t j = 0; j < width; ++j) d[j] = element(s, j * col);
    }
  }
}

// out (N, width) = h_{t-1} of every row: y (N, width) one step back, or h0 (B, width).
template <typename T>
void gather_previous(const Problem& p, const T* y, const T* h0, int64_t width, T* out) {
  int64_t prev_off = -1;
  for_each_step(p, true, [&](int64_t t, int64_t off, int64_t n) {
    const int64_t m = p.reverse ? p.rows_at(t + 1) : (prev_off < 0 ? 0 : n);
    if (m > 0) std::memcpy(out + off * width, y + prev_off * width, sizeof(T) * m * width);
    if (n > m)
      std::memcpy(out + (off + m) * width, h0 + m * width, sizeof(T) * (n - m) * width);
    prev_off = off;
  });
}

// grad (R, width) = Σ_t δ_tᵀ h_{t-1} for δ (N, R). With equal rows per step the previous
// states are y shifted by one step plus h0: two GEMMs, no copy. Otherwise h_prev holds them,
// gathered by gather_previous.
template <typename T, typename K>
void recurrent_weight_gradient(const Problem& p, K& k, const T* delta, int64_t R, const T* y,
                               const T* h0, const T* h_prev, int64_t width, T* grad) {
  const int64_t B = p.batch;
  if (!p.uniform()) {
    k.gemm(true, false, R, width, p.total_rows(), T(1), delta, R, h_prev, width, T(0), grad,
           width);
    return;
  }
  const int64_t first = p.reverse ? (p.steps - 1) * B : 0;  // rows whose previous state is h0
  k.gemm(true, false, R, width, B, T(1), delta + first * R, R, h0, width, T(0), grad, width);
  if (p.steps > 1) {
    const T* d = p.reverse ? delta : delta + B * R;
    const T* hp = p.reverse ? y + B * width : y;
    k.gemm(true, false, R, width, (p.steps - 1) * B, T(1), d, R, hp, width, T(1), grad, width);
  }
}

// Elements of T that step_weight_norms needs as workspace on `threads` threads.
inline int64_t step_weight_norms_size(const Problem& p, int threads) {
  return threads * (p.batch * p.state_size() + 2 * p.batch * p.batch);
}

// out[t] = ‖δ_tᵀ h_{t-1}‖_F for every step t (in time order): the size of step t's term of
// ∂L/∂W_hh = Σ_t δ_tᵀ h_{t-1}, as if each step had its own copy of W_hh. A dense W_hh (Dims 2)
// has `blocks` blocks of R rows, block q's δ the (N, R) plane deltas[q]; the squared norm is
// Σ_{b,b'} (Σ_q δ_b·δ_b')(h_b·h_b') over the step's n rows (two n × n Gram matrices, so no
// (G·R × width) matrix per step). A diagonal W_hh (Dims 1, R = width): ‖Σ_b δ_b ⊙ h_b‖. The
// steps are independent: K::for_each_index spreads them over K::threads() threads, each with
// its own part of the workspace.
template <int Dims, typename T, typename K>
void step_weight_norms(const Problem& p, K& k, const T* const* deltas, int64_t blocks,
                       int64_t R, const T* y, const T* h0, T* workspace, double* out) {
  const int64_t W = p.state_size(), B = p.batch;
  struct Step {
    int64_t t, off, n;
  };
  std::vector<Step> order;
  order.reserve(p.steps);
  for_each_step(p, true, [&](int64_t t, int64_t off, int64_t n) { order.push_back({t, off, n}); });
  k.for_each_index(int64_t(order.size()), [&](int64_t i, int thread) {
    const int64_t t = order[i].t, off = order[i].off, n = order[i].n;
    T* h = workspace + thread * (B * W + 2 * B * B);  // the step's h_{t-1}, n × W
    T* gram_d = h + B * W;                             // Σ_q δ δᵀ, n × n
    T* gram_h = gram_d + B * B;                        // h hᵀ, n × n
    with_previous(p, RowRange{0, n}, t, off, y, static_cast<const T*>(nullptr), h0,
                  static_cast<const T*>(nullptr),
                  [&](int64_t a, int64_t b, const T* h_prev, const T*) {
                    std::memcpy(h + a * W, h_prev, sizeof(T) * (b - a) * W);
                  });
    double sum = 0;
    if constexpr (Dims == 1) {
      for (int64_t j = 0; j < R; ++j) {
        double v = 0;
        for (int64_t r = 0; r < n; ++r) v += double(deltas[0][(off + r) * R + j]) * h[r * W + j];
        sum += v * v;
      }
    } else {
      for (int64_t q = 0; q < blocks; ++q) {
        const T* d = deltas[q] + off * R;
        k.gemm(false, true, n, n, R, T(1), d, R, d, R, T(q ? 1 : 0), gram_d, n);
      }
      k.gemm(false, true, n, n, W, T(1), h, W, h, W, T(0), gram_h, n);
      for (int64_t e = 0; e < n * n; ++e) sum += double(gram_d[e]) * gram_h[e];
    }
    out[t] = sum > 0 ? std::sqrt(sum) : 0.0;
  });
}


}  // namespace rnnkern
