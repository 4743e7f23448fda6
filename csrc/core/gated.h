// Forward and backward of one LSTM or GRU layer in one direction (DESIGN.md section 1b).
//
// The same walk as core/elman.h (its Problem, step order, packed rows, reverse and row ranges)
// with a cell policy: W_hh has G = 4 (LSTM) or 3 (GRU) blocks of H rows, and each step runs
// the backend's packed H × H kernel once per block (kStore / kAccumulate) followed by the
// cell's elementwise pass (cell.h's math). Layouts, N = total rows:
//   gates (N, G·H)  saved: the activated gates of every row (i f g o, or r z n)
//   state (N, H)    saved: LSTM c_t; GRU h_n = h_{t-1} W_hnᵀ + b_hn (the hidden part of n)
//   δ               G planes (N, H), one per gate block (the GRU has a fourth: δ_n ⊙ r, the
//                   hidden side of n), so that every product reads contiguous rows
#pragma once

#include <cstdint>
#include <cstring>

#include "elman.h"

namespace rnnkern {

enum class Cell : int { kLstm = 0, kGru = 1 };

constexpr int64_t gate_count(Cell cell) { return cell == Cell::kLstm ? 4 : 3; }
constexpr int64_t delta_planes(Cell) { return 4; }

template <typename T, typename K>
int64_t gated_forward_workspace_size(Cell cell, const Problem& p, const K&) {
  const int64_t G = gate_count(cell), H = p.hidden_size;
  return G * K::packed_size(H) + 2 * G * H + G * p.batch * H;
}

template <typename T, typename K>
int64_t gated_backward_workspace_size(Cell cell, const Problem& p, const K&) {
  const int64_t G = gate_count(cell), H = p.hidden_size, N = p.total_rows();
  return G * K::packed_size(H) + delta_planes(cell) * N * H + 2 * p.batch * H +
         (p.uniform() ? 0 : N * H);
}

// Calls visit(a, b, h_prev, c_prev) for the rows [a, b) ∩ range of step t (at row offset off):
// h_prev / c_prev point at row a's previous state (y / c rows of the step before in forward
// order, or h0 / c0 for rows that start at step t). c may be nullptr (the GRU).
template <typename T, typename F>
void with_previous(const Problem& p, RowRange range, int64_t t, int64_t off, const T* y,
                   const T* c, const T* h0, const T* c0, F&& visit) {
  const int64_t H = p.hidden_size, n = p.rows_at(t);
  auto from = [&](const T* hs, const T* cs, int64_t first) {
    return [&, hs, cs, first](int64_t a, int64_t b) {
      visit(a, b, hs + (a - first) * H, cs ? cs + (a - first) * H : nullptr);
    };
  };
  if (!p.reverse) {
    if (t == 0) {
      range.clip(0, n, from(h0, c0, 0));
    } else {
      const int64_t prev = off - p.rows_at(t - 1);
      range.clip(0, n, from(y + prev * H, c ? c + prev * H : nullptr, 0));
    }
  } else {
    const int64_t m = p.rows_at(t + 1), prev = off + n;
    if (m > 0) range.clip(0, m, from(y + prev * H, c ? c + prev * H : nullptr, 0));
    range.clip(m, n, from(h0 + m * H, c0 ? c0 + m * H : nullptr, m));
  }
}

// y (N, H): h_t of every row; gates and state as above (saved for backward). c0 and state
// are the LSTM's c0 and c_t, or unused (GRU: state gets h_n).
template <typename T, typename K>
void gated_forward(Cell cell, const Problem& p, const T* x, const T* h0, const T* c0,
                   const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* y, T* gates,
                   T* state, T* workspace, K& k) {
  const int64_t G = gate_count(cell), H = p.hidden_size, I = p.input_size, N = p.total_rows();
  const int64_t B = p.batch, GH = G * H;
  T* packed = workspace;  // block q: W_hh rows [qH, (q+1)H) packed transposed
  for (int64_t q = 0; q < G; ++q)
    k.pack(w_hh + q * H * H, H, /*transpose=*/true, packed + q * K::packed_size(H));
  T* bias_x = packed + G * K::packed_size(H);
  T* bias_h = bias_x + GH;
  T* acc = bias_h + GH;  // G planes of B × H: h_{t-1} W_hhᵀ of the rows of one step
  for (int64_t j = 0; j < GH; ++j) {
    bias_x[j] = b_ih ? element(b_ih, j) : T(0);
    bias_h[j] = b_hh ? element(b_hh, j) : T(0);
  }
  if (cell == Cell::kLstm)  // the LSTM adds both biases to every gate
    for (int64_t j = 0; j < GH; ++j) bias_x[j] += bias_h[j];

  // The input projection for all N rows at once, into the gates' rows.
  k.gemm(false, true, N, GH, I, T(1), x, I, w_ih, I, T(0), gates, GH);

  k.for_row_ranges(p, [&](RowRange rows) {
    for_each_step(p, true, [&](int64_t t, int64_t off, int64_t) {
      const T* c_all = cell == Cell::kLstm ? state : nullptr;
      with_previous(p, rows, t, off, y, c_all, h0, c0,
                    [&](int64_t a, int64_t b, const T* h_prev, const T* c_prev) {
        for (int64_t q = 0; q < G; ++q)
          k.step(Epilogue::kStore, Activation::kTanh, b - a, H, h_prev,
                 packed + q * K::packed_size(H), acc + q * B * H + a * H, nullptr, nullptr);
        T* g = gates + (off + a) * GH;
        T* h = y + (off + a) * H;
        if (cell == Cell::kLstm)
          k.lstm_forward(b - a, H, g, acc + a * H, B * H, bias_x, c_prev,
                         state + (off + a) * H, h);
        else
          k.gru_forward(b - a, H, g, acc + a * H, B * H, bias_x, bias_h, h_prev,
                        state + (off + a) * H, h);
      });
    });
  });
}

// Gradients with respect to x, h0, c0 (LSTM), W_ih, W_hh, b_ih and b_hh; each output may be
// nullptr (not computed). grad_y's data and grad_hn, grad_cn may be nullptr (zero); grad_hn
// and grad_cn rows belong to each sequence's last step, as in core/elman.h. norm_h / norm_c,
// if not nullptr, get ‖∂L/∂h_t‖₂ / ‖∂L/∂c_t‖₂ of each of the N rows (the whole gradient).
template <typename T, typename K>
void gated_backward(Cell cell, const Problem& p, const T* x, const T* h0, const T* c0,
                    const T* w_ih, const T* w_hh, const T* y, const T* gates, const T* state,
                    Rows<T> grad_y, const T* grad_hn, const T* grad_cn, T* grad_x,
                    T* grad_h0, T* grad_c0, T* grad_w_ih, T* grad_w_hh, T* grad_b_ih,
                    T* grad_b_hh, double* norm_h, double* norm_c, T* workspace, K& k) {
  const bool lstm = cell == Cell::kLstm;
  const int64_t G = gate_count(cell), H = p.hidden_size, I = p.input_size, N = p.total_rows();
  const int64_t B = p.batch, GH = G * H, plane = N * H;
  T* packed = workspace;  // block q: W_hh rows [qH, (q+1)H) packed as they are
  for (int64_t q = 0; q < G; ++q)
    k.pack(w_hh + q * H * H, H, /*transpose=*/false, packed + q * K::packed_size(H));
  T* delta = packed + G * K::packed_size(H);
  T* d = delta + delta_planes(cell) * plane;  // B × H: the gradient reaching h_t, per row
  T* dc = d + B * H;                          // B × H: the LSTM's ∂L/∂c_t, per row
  // The plane of δ that multiplies W_hh's block q (the GRU's n block: δ_n ⊙ r).
  auto hidden_plane = [&](int64_t q) { return delta + (!lstm && q == 2 ? 3 : q) * plane; };
  // dst rows [a, b) += δ rows (off + a …) times W_hh, block by block.
  auto add_recurrent = [&](int64_t off, int64_t a, int64_t b, T* dst) {
    for (int64_t q = 0; q < G; ++q)
      k.step(Epilogue::kAccumulate, Activation::kTanh, b - a, H,
             hidden_plane(q) + (off + a) * H, packed + q * K::packed_size(H), dst, nullptr,
             nullptr);
  };
  const T* c_all = lstm ? state : nullptr;

  k.for_row_ranges(p, [&](RowRange rows) {
    int64_t prev_off = -1;  // the step processed just before (later in time, forward)
    for_each_step(p, false, [&](int64_t t, int64_t off, int64_t n) {
      // d = ∂L/∂y_t, plus (GRU) the carry d_{t+1} ⊙ z_{t+1} left in d by the step before.
      auto load = [&](int64_t a, int64_t b, bool carried) {
        for (int64_t r = a; r < b; ++r) {
          T* dr = d + r * H;
          const T* g = grad_y.data + (off + r) * grad_y.row_stride;
          if (!grad_y.data) {
            if (!carried) std::memset(dr, 0, sizeof(T) * H);
          } else if (grad_y.col_stride == 1 && !carried) {
            std::memcpy(dr, g, sizeof(T) * H);
          } else if (grad_y.col_stride == 1) {
            for (int64_t j = 0; j < H; ++j) dr[j] += element(g, j);
          } else {
            for (int64_t j = 0; j < H; ++j) {
              const T v = element(g, j * grad_y.col_stride);
              dr[j] = carried ? dr[j] + v : v;
            }
          }
        }
      };
      auto continuing = [&](int64_t a, int64_t b) {
        load(a, b, !lstm);
        add_recurrent(prev_off, a, b, d + a * H);
      };
      auto ending = [&](int64_t a, int64_t b) {  // no later step: grad_hn, grad_cn instead
        load(a, b, false);
        for (int64_t r = a; r < b; ++r)
          for (int64_t j = 0; j < H; ++j) {
            if (grad_hn) d[r * H + j] += element(grad_hn, r * H + j);
            if (lstm) dc[r * H + j] = grad_cn ? element(grad_cn, r * H + j) : T(0);
          }
      };
      if (!p.reverse) {
        const int64_t m = p.rows_at(t + 1);
        rows.clip(0, m, continuing);
        rows.clip(m, n, ending);
      } else if (t == 0) {
        rows.clip(0, n, ending);
      } else {
        rows.clip(0, n, continuing);
      }
      with_previous(p, rows, t, off, y, c_all, h0, c0,
                    [&](int64_t a, int64_t b, const T* h_prev, const T* c_prev) {
        T* dl = delta + (off + a) * H;
        double* nh = norm_h ? norm_h + off + a : nullptr;
        if (lstm)
          k.lstm_backward(b - a, H, d + a * H, dc + a * H, gates + (off + a) * GH,
                          state + (off + a) * H, c_prev, dl, plane, nh,
                          norm_c ? norm_c + off + a : nullptr);
        else
          k.gru_backward(b - a, H, d + a * H, gates + (off + a) * GH, state + (off + a) * H,
                         h_prev, dl, plane, nh);
      });
      // Rows that started from h0 at this step: ∂L/∂h0 = δ W_hh (+ the GRU's carry), ∂L/∂c0.
      auto initial = [&](int64_t a, int64_t b) {
        if (grad_h0) {
          for (int64_t r = a; r < b; ++r)
            for (int64_t j = 0; j < H; ++j) grad_h0[r * H + j] = lstm ? T(0) : d[r * H + j];
          add_recurrent(off, a, b, grad_h0 + a * H);
        }
        if (grad_c0 && lstm)
          std::memcpy(grad_c0 + a * H, dc + a * H, sizeof(T) * (b - a) * H);
      };
      if (!p.reverse) {
        if (t == 0) rows.clip(0, n, initial);
      } else {
        rows.clip(p.rows_at(t + 1), n, initial);
      }
      prev_off = off;
    });
  });

  // Everything else: one pass over all N rows each, block by block.
  for (int64_t q = 0; q < G; ++q) {
    const T* in = delta + q * plane;  // input side
    const T* hid = hidden_plane(q);
    if (grad_b_ih) k.column_sums(N, H, in, grad_b_ih + q * H);
    if (grad_b_hh && grad_b_ih && hid == in)  // the same sums (all but the GRU's n block)
      std::memcpy(grad_b_hh + q * H, grad_b_ih + q * H, sizeof(T) * H);
    else if (grad_b_hh)
      k.column_sums(N, H, hid, grad_b_hh + q * H);
    if (grad_w_ih)
      k.gemm(true, false, H, I, N, T(1), in, H, x, I, T(0), grad_w_ih + q * H * I, I);
    if (grad_x)
      k.gemm(false, false, N, I, H, T(1), in, H, w_ih + q * H * I, I, T(q ? 1 : 0), grad_x, I);
  }
  if (!grad_w_hh) return;
  // ∂W_hh = Σ δ_tᵀ h_{t-1}, as in core/elman.h: y shifted by one step plus h0, or gathered.
  const int64_t first = p.reverse ? (p.steps - 1) * B : 0;  // rows whose previous state is h0
  T* h_prev = d + 2 * B * H;
  if (!p.uniform()) {
    int64_t prev_off = -1;
    for_each_step(p, true, [&](int64_t t, int64_t off, int64_t n) {
      const int64_t m = p.reverse ? p.rows_at(t + 1) : (prev_off < 0 ? 0 : n);
      if (m > 0) std::memcpy(h_prev + off * H, y + prev_off * H, sizeof(T) * m * H);
      if (n > m) std::memcpy(h_prev + (off + m) * H, h0 + m * H, sizeof(T) * (n - m) * H);
      prev_off = off;
    });
  }
  for (int64_t q = 0; q < G; ++q) {
    const T* hid = hidden_plane(q);
    T* gw = grad_w_hh + q * H * H;
    if (!p.uniform()) {
      k.gemm(true, false, H, H, N, T(1), hid, H, h_prev, H, T(0), gw, H);
      continue;
    }
    k.gemm(true, false, H, H, B, T(1), hid + first * H, H, h0, H, T(0), gw, H);
    if (p.steps > 1) {
      const T* dq = p.reverse ? hid : hid + B * H;
      const T* hp = p.reverse ? y + B * H : y;
      k.gemm(true, false, H, H, (p.steps - 1) * B, T(1), dq, H, hp, H, T(1), gw, H);
    }
  }
}

}  // namespace rnnkern
