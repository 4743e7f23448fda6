#include "layer.h"

#include <omp.h>

#include <chrono>
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

// A forward of at most this many rows per step and steps reads W_hh's rows as they are, by
// dot products (packing them costs more than a short call's steps gain), where the packed
// step would not split its columns over threads (kParallelMinWork of recurrent_kernel.h).
constexpr int64_t kUnpackedMaxBatch = 2;
constexpr int64_t kUnpackedMaxSteps = 16;
constexpr int64_t kUnpackedMaxWork = int64_t(1) << 19;
// GEMMs of up to this many rows of C (or, for C = Aᵀ · B, this inner size) are the vector
// kernels dot and times (BLAS packs B for them).
constexpr int64_t kDotMaxRows = 4;
// C = A · Wᵀ up to this many rows is the dot kernel, which reads W as it is once (BLAS copies
// W into its packed panels on every call).
constexpr int64_t kDotBlockMaxRows = 64;
// A call of one step and more rows runs it as BLAS GEMMs on W_hh as it is, forward (the gated
// cells) and backward: packing W_hh costs more than one step gains (measured; at two steps the
// packed step is as fast or faster).
constexpr int64_t kBlasMaxSteps = 1;
// The pointwise pass of such a step splits its rows over two threads from this many rows and
// values.
constexpr int64_t kPassSplitMinRows = 8;
constexpr int64_t kPassSplitMinWork = 4096;

// The primitives core/recurrence.h and the cells ask of a backend.
template <typename T>
struct Backend {
  const RecurrentKernels<T>& kernels = recurrent_kernels<T>();
  bool unpacked = false;  // the forward's steps read W_hh as it is (set by forward())
  bool plain_backward = false;  // the backward's steps read W_hh as it is (set by backward())
  bool blas_steps = false;  // the forward's steps are BLAS GEMMs on W_hh as it is (forward())
  bool blas_backward = false;  // the backward's too (set by backward())

  static int64_t packed_size(int64_t H) { return cpu::packed_size<T>(H); }
  static int64_t norm_slots(int64_t H) { return cpu::norm_slots<T>(H); }

  static bool reads_unpacked(const Problem& p) {
    return p.batch <= kUnpackedMaxBatch && p.steps <= kUnpackedMaxSteps &&
           p.batch * p.hidden_size * p.hidden_size < kUnpackedMaxWork;
  }
  // Whether a call's steps are BLAS GEMMs on W_hh as it is: the backward's, and the forward's
  // for the gated cells (forward()).
  static bool blas_step_calls(const Problem& p) {
    return !reads_unpacked(p) && p.steps <= kBlasMaxSteps && !p.proj_size;
  }

  // W_hh's block (H × H) as step() reads it: packed into `packed` (transposed for the
  // forward), or w itself where the steps read it as it is.
  const T* pack(const T* w, int64_t H, bool transpose, T* packed) const {
    if (transpose ? reads_whole() : plain_backward || blas_backward) return w;
    kernels.pack(w, H, transpose, packed);
    return packed;
  }
  void step(Epilogue e, Activation act, int64_t rows, int64_t H, const T* a, const T* w,
            T* c, const T* h, T* d) const {
    if (plain_backward || blas_backward) {  // the backward's: c (op)= a · W_hh, then φ'
      if (plain_backward)
        kernels.times(rows, H, H, a, H, false, w, H, e != Epilogue::kStore, c, H);
      else
        gemm(false, false, rows, H, H, T(1), a, H, w, H, e == Epilogue::kStore ? T(0) : T(1), c,
             H);
      if (e == Epilogue::kBackwardRecord) kernels.row_square_sums(rows, H, c, d);
      if (e == Epilogue::kBackward || e == Epilogue::kBackwardRecord)
        kernels.scale_by_derivative(act, rows, H, c, h);
    } else if (blas_steps) {
      gemm(false, true, rows, H, H, T(1), a, H, w, H, e == Epilogue::kStore ? T(0) : T(1), c, H);
      if (e == Epilogue::kForward) kernels.bias_activate(act, rows, H, c, h);
    } else if (unpacked) {
      kernels.step_rows(e, act, rows, H, a, w, c, h, d);
    } else {
      kernels.step(e, act, rows, H, a, w, c, h, d);
    }
  }
  // Whether the forward's steps read W_hh as it is: then a cell may take all its gate blocks
  // in one step_gates() call.
  bool reads_whole() const { return unpacked || blas_steps; }
  // C (rows × G·H, row-major) = A (rows × H) · W_hhᵀ, W_hh (G·H × H) as it is (reads_whole()).
  // The unpacked dot products of a W of 512 KiB or more split its rows over two threads, each
  // thread always the same half, which stays in its core's cache from step to step.
  void step_gates(int64_t rows, int64_t H, int64_t G, const T* a, const T* w, T* c) const {
    if (blas_steps)
      gemm(false, true, rows, G * H, H, T(1), a, H, w, H, T(0), c, G * H);
    else
      kernels.dot(rows, G * H, H, a, H, w, H, false, c, G * H);
  }
  // f(r0, r1) over rows [0, rows) of a step's pointwise pass: for BLAS steps of many rows
  // (whose time loop runs on one thread) in two halves on the threads, else at once. The pass
  // is elementwise, so its results do not depend on the split.
  template <typename F>
  void pass_rows(int64_t rows, int64_t H, F&& f) const {
    if (!blas_steps || rows < kPassSplitMinRows || rows * H < kPassSplitMinWork) {
      f(int64_t(0), rows);
      return;
    }
    const int64_t half = rows / 2;
    for_each_index(2, [&](int64_t i, int) { i == 0 ? f(int64_t(0), half) : f(half, rows); });
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
    if (!ta && tb && m <= kDotBlockMaxRows && alpha == T(1) && (beta == T(0) || beta == T(1)))
      kernels.dot(m, n, k, a, lda, b, ldb, beta == T(1), c, ldc);
    else if (ta && !tb && k <= kDotMaxRows && alpha == T(1) && (beta == T(0) || beta == T(1)))
      kernels.times(m, n, k, a, lda, true, b, ldb, beta == T(1), c, ldc);  // Σ of k outer products
    else if (!ta && !tb && m <= kDotMaxRows && alpha == T(1) && (beta == T(0) || beta == T(1)))
      kernels.times(m, n, k, a, lda, false, b, ldb, beta == T(1), c, ldc);  // B's rows streamed
    else
      cpu::gemm<T>(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
  }
  // The time loop on row ranges, one per thread, with equal work (a packed sequence's rows
  // are live for different numbers of steps). Rows never wait for each other, so there is
  // no synchronisation between steps and h never moves between cores.
  // Range bounds are multiples of `align` (or B).
  template <typename F>
  void for_row_ranges(const Problem& p, int64_t align, F&& run) const {
    const int64_t B = p.batch, H = p.hidden_size, N = p.total_rows();
    const int threads = omp_get_max_threads();
    // BLAS steps are whole GEMMs: their sums depend on the call's shape, not on the threads.
    if (blas_steps || blas_backward || threads < 2 || B < kMinRowsPerThread * 2 ||
        N * H * H < kRowSplitMinWork || H > kRowSplitMaxHidden) {
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
      if (done * threads >= next * N) {
        const int64_t bound = (b + align) / align * align;
        bounds[next++] = bound < B ? bound : B;
      }
    }
#pragma omp parallel num_threads(threads)
    {
      // The runtime may give a smaller team than asked for: every range must still run.
      for (int r = omp_get_thread_num(); r < threads; r += omp_get_num_threads())
        if (bounds[r] < bounds[r + 1]) run(RowRange{bounds[r], bounds[r + 1]});
    }
  }

  // run(i, thread) for every i < count, spread over threads() threads (thread < threads()).
  static int threads() { return omp_get_max_threads(); }
  template <typename F>
  void for_each_index(int64_t count, F&& run) const {
    const int team = threads();
    if (team < 2 || count < 2) {
      for (int64_t i = 0; i < count; ++i) run(i, 0);
      return;
    }
#pragma omp parallel num_threads(team)
    {
      const int id = omp_get_thread_num(), size = omp_get_num_threads();
      for (int64_t i = id; i < count; i += size) run(i, id);
    }
  }

  void column_sums(int64_t rows, int64_t H, const T* a, T* out) const {
    std::memset(out, 0, sizeof(T) * H);
    for (int64_t r = 0; r < rows; ++r) kernels.accumulate(H, a + r * H, out);
  }
  void accumulate(int64_t n, const T* src, T* dst) const { kernels.accumulate(n, src, dst); }

  // Cell C's pointwise passes, as built for this CPU's instruction set.
  template <typename C>
  void forward_pass(const typename C::template ForwardPass<T>& args) const {
    kernels.passes.template of<C>().forward(args);
  }
  template <typename C>
  void backward_pass(const typename C::template BackwardPass<T>& args) const {
    kernels.passes.template of<C>().backward(args);
  }
};

}  // namespace

template <typename Cell, typename T>
int64_t forward_workspace_size(const Problem& p) {
  return rnnkern::forward_workspace_size<Cell, T, Backend<T>>(p);
}

template <typename Cell, typename T>
int64_t backward_workspace_size(const Problem& p, bool record_norms, bool record_weight_norms) {
  return rnnkern::backward_workspace_size<Cell, T, Backend<T>>(p, record_norms,
                                                               record_weight_norms);
}

template <typename Cell, typename T>
void forward(const Problem& p, const Inputs<T>& in, const Outputs<T>& out, T* workspace) {
  Backend<T> k;
  k.unpacked = Backend<T>::reads_unpacked(p);
  // The Elman cell's one block gains nothing from one GEMM, and its packed step splits the
  // rows over the threads (measured at T = 1, B = 32, H = 256: 90 against 108 µs).
  k.blas_steps = Cell::kGates > 1 && Backend<T>::blas_step_calls(p);
  rnnkern::forward<Cell, T>(p, in, out, workspace, k);
}

template <typename Cell, typename T>
void backward(const Problem& p, const Inputs<T>& in, const Outputs<const T>& out,
              const Gradients<T>& grads, T* workspace) {
  Backend<T> k;
  k.plain_backward = Backend<T>::reads_unpacked(p);
  k.blas_backward = Backend<T>::blas_step_calls(p);
  rnnkern::backward<Cell, T>(p, in, out, grads, workspace, k);
}

namespace {

// Layer-direction `layer` of the stack as one Problem.
Problem stack_problem(const Stack& s, int64_t layer, bool reverse) {
  Problem p;
  p.steps = s.steps;
  p.batch = s.batch;
  p.input_size = layer == 0 ? s.input_size : s.directions * s.hidden_size;
  p.hidden_size = s.hidden_size;
  p.reverse = reverse;
  p.act = s.act;
  return p;
}

// Where the stack's workspace puts things (elements of T).
template <typename Cell, typename T>
struct StackLayout {
  int64_t kernel = 0, saved = 0, per_direction = 0, between = 0, total = 0;
  explicit StackLayout(const Stack& s) {
    const int64_t N = s.steps * s.batch, H = s.hidden_size;
    for (int64_t l = 0; l < (s.layers > 1 ? 2 : 1); ++l) {
      const int64_t k = rnnkern::forward_workspace_size<Cell, T, Backend<T>>(
          stack_problem(s, l, false));
      kernel = k > kernel ? k : kernel;
    }
    for (int i = 0; i < Cell::kSavedCount; ++i)
      if (!Cell::kSaved[i].projection_only) saved += Cell::kSaved[i].width * N * H;
    per_direction = s.directions > 1 ? N * H : 0;    // one direction's y, then copied
    between = s.layers > 1 ? 2 * N * s.directions * H : 0;  // layers' outputs, in turn
    total = kernel + saved + per_direction + between;
  }
};

// Where cell C keeps its second state (the LSTM's c) among its saved arrays.
template <typename C>
int second_state_saved() {
  int at = 0;
  for (int i = 0; i < C::kSavedCount; ++i) {
    if (C::kSaved[i].projection_only) continue;
    if (std::strcmp(C::kSaved[i].name, "c") == 0) return at;
    ++at;
  }
  return -1;
}

}  // namespace

template <typename Cell, typename T>
int64_t stack_workspace_size(const Stack& s) {
  return StackLayout<Cell, T>(s).total;
}

template <typename Cell, typename T>
void stack_forward(const Stack& s, const T* x, const T* h0, const T* c0,
                   const T* const* weights, T* y, T* h_n, T* c_n, T* workspace) {
  const StackLayout<Cell, T> layout(s);
  const int64_t B = s.batch, H = s.hidden_size, D = s.directions, N = s.steps * B;
  T* kernel_ws = workspace;
  T* saved_ws = kernel_ws + layout.kernel;
  T* direction_y = saved_ws + layout.saved;
  T* between[2] = {direction_y + layout.per_direction,
                   direction_y + layout.per_direction + N * D * H};
  const int c_at = Cell::kStates == 2 ? second_state_saved<Cell>() : -1;
  const T* layer_in = x;
  for (int64_t l = 0; l < s.layers; ++l) {
    T* layer_out = l + 1 == s.layers ? y : between[l % 2];
    for (int64_t d = 0; d < D; ++d) {
      const int64_t index = l * D + d;
      const Problem p = stack_problem(s, l, d == 1);
      Inputs<T> in;
      in.x = layer_in;
      in.h0 = h0 + index * B * H;
      in.c0 = c0 ? c0 + index * B * H : nullptr;
      in.w_ih = weights[4 * index];
      in.w_hh = weights[4 * index + 1];
      in.b_ih = weights[4 * index + 2];
      in.b_hh = weights[4 * index + 3];
      Outputs<T> out;
      out.y = D == 1 ? layer_out : direction_y;
      T* next = saved_ws;
      for (int i = 0, at = 0; i < Cell::kSavedCount; ++i) {
        if (Cell::kSaved[i].projection_only) continue;
        out.saved[at++] = next;
        next += Cell::kSaved[i].width * N * H;
      }
      forward<Cell, T>(p, in, out, kernel_ws);
      // Each sequence's last step: t = T - 1, or t = 0 in reverse.
      const int64_t last = d == 1 ? 0 : (s.steps - 1) * B * H;
      std::memcpy(h_n + index * B * H, out.y + last, sizeof(T) * B * H);
      if (c_at >= 0 && c_n)
        std::memcpy(c_n + index * B * H, out.saved[c_at] + last, sizeof(T) * B * H);
      if (D > 1)
        for (int64_t r = 0; r < N; ++r)
          std::memcpy(layer_out + (r * D + d) * H, direction_y + r * H, sizeof(T) * H);
    }
    layer_in = layer_out;
  }
}

const char* isa() { return recurrent_kernels<float>().isa; }

template <typename T>
double fma_peak_gflops(int threads, double seconds) {
  const RecurrentKernels<T>& k = recurrent_kernels<T>();
  const double flop_per_iteration = 2.0 * kFmaChains * (k.vector_bytes / double(sizeof(T)));
  volatile T sink = 0;
  // The rate of `iterations` rounds on every thread (each thread the same rounds).
  auto rate = [&](int64_t iterations) {
    const auto start = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
    sink = sink + k.fma_loop(iterations, T(1) + T(omp_get_thread_num()));
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    return flop_per_iteration * double(iterations) * threads / took.count() / 1e9;
  };
  const double probe_rate = rate(100000);
  const int64_t iterations =
      int64_t(seconds / 4 * probe_rate * 1e9 / flop_per_iteration / threads) + 1;
  rate(iterations);  // wakes the threads and lets the clock settle
  double best = 0;
  for (int r = 0; r < 3; ++r) {
    const double got = rate(iterations);
    if (got > best) best = got;
  }
  return best;
}
template double fma_peak_gflops<float>(int, double);
template double fma_peak_gflops<double>(int, double);

#define RNNKERN_INSTANTIATE_FOR(Cell, T)                                                     \
  template int64_t forward_workspace_size<Cell, T>(const Problem&);                         \
  template int64_t backward_workspace_size<Cell, T>(const Problem&, bool, bool);            \
  template void forward<Cell, T>(const Problem&, const Inputs<T>&, const Outputs<T>&, T*);   \
  template void backward<Cell, T>(const Problem&, const Inputs<T>&, const Outputs<const T>&, \
                                  const Gradients<T>&, T*);                                 \
  template int64_t stack_workspace_size<Cell, T>(const Stack&);                             \
  template void stack_forward<Cell, T>(const Stack&, const T*, const T*, const T*,          \
                                       const T* const*, T*, T*, T*, T*);
#define RNNKERN_INSTANTIATE(Cell)        \
  RNNKERN_INSTANTIATE_FOR(Cell, float) \
  RNNKERN_INSTANTIATE_FOR(Cell, double)
RNNKERN_CELLS(RNNKERN_INSTANTIATE)
#undef RNNKERN_INSTANTIATE
#undef RNNKERN_INSTANTIATE_FOR

}  // namespace rnnkern::cpu
