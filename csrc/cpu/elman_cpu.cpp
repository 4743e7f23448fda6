#include "elman_cpu.h"
#include "gated_cpu.h"

#include <omp.h>

#include <cstring>
#include <vector>

#include "blas.h"
#include "recurrent.h"

namespace rnnkern::cpu {
namespace {

// Splitting the time loop by rows pays from this many rows per thread and this much work, and
// up to this hidden size; above it each thread streaming all of W_hh every step costs more
// than sharing h between cores, and each step is split by columns instead (measured).
constexpr int64_t kMinRowsPerThread = 4;
constexpr int64_t kRowSplitMinWork = int64_t(1) << 20;
constexpr int64_t kRowSplitMaxHidden = 512;

// The primitives core/elman.h asks of a backend.
template <typename T>
struct Backend {
  const RecurrentKernels<T>& kernels = recurrent_kernels<T>();

  static int64_t packed_size(int64_t H) { return cpu::packed_size<T>(H); }
  static int64_t norm_slots(int64_t H) { return cpu::norm_slots<T>(H); }

  void pack(const T* w, int64_t H, bool transpose, T* packed) const {
    kernels.pack(w, H, transpose, packed);
  }
  void step(Epilogue e, Activation act, int64_t rows, int64_t H, const T* a, const T* packed,
            T* c, const T* h, T* d) const {
    kernels.step(e, act, rows, H, a, packed, c, h, d);
  }
  void scale_by_derivative(Activation act, int64_t rows, int64_t H, T* c, const T* h) const {
    kernels.scale_by_derivative(act, rows, H, c, h);
  }
  void row_square_sums(int64_t rows, int64_t H, const T* d, T* slots) const {
    kernels.row_square_sums(rows, H, d, slots);
  }
  void row_norms(int64_t rows, int64_t H, const T* slots, double* out) const {
    kernels.row_norms(rows, H, slots, out);
  }
  void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda,
            const T* b, int64_t ldb, T beta, T* c, int64_t ldc) const {
    cpu::gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  // The time loop on row ranges, one per thread, with equal work (a packed sequence's rows
  // are live for different numbers of steps). Rows never wait for each other, so there is
  // no synchronisation between steps and h never moves between cores.
  template <typename F>
  void for_row_ranges(const Problem& p, F&& run) const {
    const int64_t B = p.batch, H = p.hidden_size, N = p.total_rows();
    const int threads = omp_get_max_threads();
    if (threads < 2 || B < kMinRowsPerThread * 2 || N * H * H < kRowSplitMinWork ||
        H > kRowSplitMaxHidden) {
      run(RowRange{0, B});
      return;
    }
    // length[b]: steps at which row b is live; split where the running sum crosses i·N/threads.
    std::vector<int64_t> length(B, 0);
    for (int64_t t = 0; t < p.steps; ++t) length[p.rows_at(t) - 1] += 1;
    for (int64_t b = B - 2; b >= 0; --b) length[b] += length[b + 1];
    std::vector<int64_t> bounds(threads + 1, B);
    bounds[0] = 0;
    int64_t done = 0, next = 1;
    for (int64_t b = 0; b < B && next < threads; ++b) {
      done += length[b];
      if (done * threads >= next * N) bounds[next++] = b + 1;
    }
#pragma omp parallel num_threads(threads)
    {
      // The runtime may give a smaller team than asked for: every range must still run.
      for (int r = omp_get_thread_num(); r < threads; r += omp_get_num_threads())
        if (bounds[r] < bounds[r + 1]) run(RowRange{bounds[r], bounds[r + 1]});
    }
  }

  void column_sums(int64_t rows, int64_t H, const T* a, T* out) const {
    std::memset(out, 0, sizeof(T) * H);
    for (int64_t r = 0; r < rows; ++r) kernels.accumulate(H, a + r * H, out);
  }
  void accumulate(int64_t n, const T* src, T* dst) const { kernels.accumulate(n, src, dst); }

  // The gated cells' elementwise passes (core/gated.h).
  void lstm_forward(int64_t rows, int64_t H, T* gates, const T* acc, int64_t acc_plane,
                    const T* bias, const T* c_prev, T* c, T* m) const {
    kernels.lstm_forward(rows, H, gates, acc, acc_plane, bias, c_prev, c, m);
  }
  void lstm_backward(int64_t rows, int64_t H, const T* d, T* dc, const T* gates, const T* c,
                     const T* c_prev, T* delta, int64_t plane, double* norm_h,
                     double* norm_c) const {
    kernels.lstm_backward(rows, H, d, dc, gates, c, c_prev, delta, plane, norm_h, norm_c);
  }
  void gru_forward(int64_t rows, int64_t H, T* gates, const T* acc, int64_t acc_plane,
                   const T* b_ih, const T* b_hh, const T* h_prev, T* hn, T* h) const {
    kernels.gru_forward(rows, H, gates, acc, acc_plane, b_ih, b_hh, h_prev, hn, h);
  }
  void gru_backward(int64_t rows, int64_t H, T* d, const T* gates, const T* hn,
                    const T* h_prev, T* delta, int64_t plane, double* norm_h) const {
    kernels.gru_backward(rows, H, d, gates, hn, h_prev, delta, plane, norm_h);
  }
};

}  // namespace

template <typename T>
int64_t forward_workspace_size(const Problem& p) {
  return rnnkern::forward_workspace_size<T>(p, Backend<T>{});
}

template <typename T>
int64_t backward_workspace_size(const Problem& p, bool record_norms) {
  return rnnkern::backward_workspace_size<T>(p, Backend<T>{}, record_norms);
}

template <typename T>
void forward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
             const T* b_ih, const T* b_hh, T* y, T* workspace) {
  Backend<T> k;
  rnnkern::forward<T>(p, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, k);
}

template <typename T>
void backward(const Problem& p, const T* x, const T* h0, const T* w_ih, const T* w_hh,
              const T* y, Rows<T> grad_y, const T* grad_hn, T* grad_x, T* grad_h0,
              T* grad_w_ih, T* grad_w_hh, T* grad_b, double* grad_norms, T* workspace) {
  Backend<T> k;
  rnnkern::backward<T>(p, x, h0, w_ih, w_hh, y, grad_y, grad_hn, grad_x, grad_h0, grad_w_ih,
                       grad_w_hh, grad_b, grad_norms, workspace, k);
}

const char* isa() { return recurrent_kernels<float>().isa; }

#define RNNKERN_INSTANTIATE(T)                                                               \
  template int64_t forward_workspace_size<T>(const Problem&);                               \
  template int64_t backward_workspace_size<T>(const Problem&, bool);                        \
  template void forward<T>(const Problem&, const T*, const T*, const T*, const T*, const T*, \
                           const T*, T*, T*);                                                \
  template void backward<T>(const Problem&, const T*, const T*, const T*, const T*,          \
                            const T*, Rows<T>, const T*, T*, T*, T*, T*, T*, double*, T*);
RNNKERN_INSTANTIATE(float)
RNNKERN_INSTANTIATE(double)
#undef RNNKERN_INSTANTIATE

// The gated cells (core/gated.h) on the same backend.
template <typename T>
int64_t gated_forward_workspace_size(Cell cell, const Problem& p) {
  return rnnkern::gated_forward_workspace_size<T>(cell, p, Backend<T>{});
}

template <typename T>
int64_t gated_backward_workspace_size(Cell cell, const Problem& p) {
  return rnnkern::gated_backward_workspace_size<T>(cell, p, Backend<T>{});
}

template <typename T>
void gated_forward(Cell cell, const Problem& p, const T* x, const T* h0, const T* c0,
                   const T* w_ih, const T* w_hh, const T* b_ih, const T* b_hh, T* y, T* gates,
                   T* state, T* workspace) {
  Backend<T> k;
  rnnkern::gated_forward<T>(cell, p, x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, gates, state,
                            workspace, k);
}

template <typename T>
void gated_backward(Cell cell, const Problem& p, const T* x, const T* h0, const T* c0,
                    const T* w_ih, const T* w_hh, const T* y, const T* gates, const T* state,
                    Rows<T> grad_y, const T* grad_hn, const T* grad_cn, T* grad_x,
                    T* grad_h0, T* grad_c0, T* grad_w_ih, T* grad_w_hh, T* grad_b_ih,
                    T* grad_b_hh, double* norm_h, double* norm_c, T* workspace) {
  Backend<T> k;
  rnnkern::gated_backward<T>(cell, p, x, h0, c0, w_ih, w_hh, y, gates, state, grad_y, grad_hn,
                             grad_cn, grad_x, grad_h0, grad_c0, grad_w_ih, grad_w_hh,
                             grad_b_ih, grad_b_hh, norm_h, norm_c, workspace, k);
}

#define RNNKERN_INSTANTIATE(T)                                                                \
  template int64_t gated_forward_workspace_size<T>(Cell, const Problem&);                    \
  template int64_t gated_backward_workspace_size<T>(Cell, const Problem&);                   \
  template void gated_forward<T>(Cell, const Problem&, const T*, const T*, const T*,          \
                                 const T*, const T*, const T*, const T*, T*, T*, T*, T*);     \
  template void gated_backward<T>(Cell, const Problem&, const T*, const T*, const T*,         \
                                  const T*, const T*, const T*, const T*, const T*, Rows<T>,  \
                                  const T*, const T*, T*, T*, T*, T*, T*, T*, T*, double*,    \
                                  double*, T*);
RNNKERN_INSTANTIATE(float)
RNNKERN_INSTANTIATE(double)
#undef RNNKERN_INSTANTIATE

}  // namespace rnnkern::cpu
