// The one pybind11 file of rnnkern._cuda. Device pointers, sizes and the stream come in as
// integers (rnnkern/gpu.py has checked shapes, dtypes, devices and contiguity); this file checks
// what it can see, releases the GIL and calls the launchers of elman_cuda.cu. It includes no
// CUDA header, so it compiles with the host compiler.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "elman_cuda.h"

namespace py = pybind11;
using rnnkern::Activation;
using rnnkern::cuda::Loop;

namespace {

Activation parse_nonlinearity(const py::object& obj) {
  if (py::isinstance<py::str>(obj)) {
    const std::string s = obj.cast<std::string>();
    if (s == "tanh") return Activation::kTanh;
    if (s == "relu") return Activation::kRelu;
  }
  throw py::value_error("nonlinearity must be 'tanh' or 'relu', got " +
                        py::repr(obj).cast<std::string>());
}

void check_size(const char* name, int64_t value) {
  if (value < 0) throw py::value_error(std::string(name) + " must be >= 0, got " +
                                       std::to_string(value));
}

Loop make_loop(int64_t steps, int64_t batch, int64_t hidden, int64_t total_rows,
               std::uintptr_t batch_sizes, bool reverse, const py::object& nonlinearity) {
  check_size("steps", steps);
  check_size("batch", batch);
  check_size("hidden", hidden);
  check_size("total_rows", total_rows);
  int64_t cells;
  if (__builtin_mul_overflow(total_rows, hidden, &cells) ||
      __builtin_mul_overflow(hidden, hidden, &cells))
    throw py::value_error("total_rows x hidden or hidden x hidden does not fit in 64 bits");
  int64_t uniform_rows;
  if (!batch_sizes && (__builtin_mul_overflow(steps, batch, &uniform_rows) ||
                       uniform_rows != total_rows))
    throw py::value_error("total_rows must be steps x batch = " + std::to_string(steps) +
                          " x " + std::to_string(batch) + " without batch_sizes, got " +
                          std::to_string(total_rows));
  Loop loop;
  loop.steps = steps;
  loop.batch = batch;
  loop.hidden = hidden;
  loop.total_rows = total_rows;
  loop.batch_sizes = reinterpret_cast<const int64_t*>(batch_sizes);
  loop.reverse = reverse;
  loop.act = parse_nonlinearity(nonlinearity);
  return loop;
}

template <typename T>
T* pointer(const char* name, std::uintptr_t address, bool required) {
  if (required && address == 0)
    throw py::value_error(std::string(name) + " must be a device pointer, got 0");
  if (address % alignof(T) != 0)
    throw py::value_error(std::string(name) + " must be aligned to " +
                          std::to_string(alignof(T)) + " bytes, got address " +
                          std::to_string(address));
  return reinterpret_cast<T*>(address);
}

template <typename T>
void forward_typed(int device, std::uintptr_t stream, const Loop& loop, std::uintptr_t w_hh_t,
                   std::uintptr_t h0, std::uintptr_t y) {
  const T* w = pointer<const T>("w_hh_t", w_hh_t, true);
  const T* h = pointer<const T>("h0", h0, true);
  T* out = pointer<T>("y", y, true);
  py::gil_scoped_release release;
  rnnkern::cuda::forward_loop<T>(device, stream, loop, w, h, out);
}

template <typename T>
void backward_typed(int device, std::uintptr_t stream, const Loop& loop, std::uintptr_t w_hh,
                    std::uintptr_t y, std::uintptr_t grad_y, std::uintptr_t grad_hn,
                    std::uintptr_t delta, std::uintptr_t grad_h0, std::uintptr_t norms) {
  const T* w = pointer<const T>("w_hh", w_hh, true);
  const T* h = pointer<const T>("y", y, true);
  const T* gy = pointer<const T>("grad_y", grad_y, false);
  const T* ghn = pointer<const T>("grad_hn", grad_hn, false);
  T* d = pointer<T>("delta", delta, true);
  T* gh0 = pointer<T>("grad_h0", grad_h0, false);
  double* n = pointer<double>("norms", norms, false);
  py::gil_scoped_release release;
  rnnkern::cuda::backward_loop<T>(device, stream, loop, w, h, gy, ghn, d, gh0, n);
}

void forward_loop(bool is_double, int device, std::uintptr_t stream, int64_t steps,
                  int64_t batch, int64_t hidden, int64_t total_rows, std::uintptr_t batch_sizes,
                  bool reverse, const py::object& nonlinearity, std::uintptr_t w_hh_t,
                  std::uintptr_t h0, std::uintptr_t y) {
  const Loop loop = make_loop(steps, batch, hidden, total_rows, batch_sizes, reverse,
                              nonlinearity);
  if (is_double)
    forward_typed<double>(device, stream, loop, w_hh_t, h0, y);
  else
    forward_typed<float>(device, stream, loop, w_hh_t, h0, y);
}

void backward_loop(bool is_double, int device, std::uintptr_t stream, int64_t steps,
                   int64_t batch, int64_t hidden, int64_t total_rows,
                   std::uintptr_t batch_sizes, bool reverse, const py::object& nonlinearity,
                   std::uintptr_t w_hh, std::uintptr_t y, std::uintptr_t grad_y,
                   std::uintptr_t grad_hn, std::uintptr_t delta, std::uintptr_t grad_h0,
                   std::uintptr_t norms) {
  const Loop loop = make_loop(steps, batch, hidden, total_rows, batch_sizes, reverse,
                              nonlinearity);
  if (is_double)
    backward_typed<double>(device, stream, loop, w_hh, y, grad_y, grad_hn, delta, grad_h0,
                           norms);
  else
    backward_typed<float>(device, stream, loop, w_hh, y, grad_y, grad_hn, delta, grad_h0,
                          norms);
}

}  // namespace

#ifndef RNNKERN_CUDA_ARCHITECTURES
#define RNNKERN_CUDA_ARCHITECTURES ""
#endif
#ifndef RNNKERN_CUDA_VERSION
#define RNNKERN_CUDA_VERSION ""
#endif

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "rnnkern's CUDA loops (kernels v1); use through rnnkern.RNN / rnnkern.functional";
  m.def("forward_loop", &forward_loop, py::arg("is_double"), py::arg("device"),
        py::arg("stream"), py::arg("steps"), py::arg("batch"), py::arg("hidden"),
        py::arg("total_rows"), py::arg("batch_sizes"), py::arg("reverse"),
        py::arg("nonlinearity"), py::arg("w_hh_t"), py::arg("h0"), py::arg("y"),
        "y = φ(y + h_prev · W_hhᵀ) for every row in step order, y holding the input "
        "projection on entry. Enqueues one kernel on `stream`.");
  m.def("backward_loop", &backward_loop, py::arg("is_double"), py::arg("device"),
        py::arg("stream"), py::arg("steps"), py::arg("batch"), py::arg("hidden"),
        py::arg("total_rows"), py::arg("batch_sizes"), py::arg("reverse"),
        py::arg("nonlinearity"), py::arg("w_hh"), py::arg("y"), py::arg("grad_y"),
        py::arg("grad_hn"), py::arg("delta"), py::arg("grad_h0"), py::arg("norms"),
        "delta = δ_t of every row, walking back in time; grad_h0 and the per-row norms of "
        "∂L/∂h_t when their pointers are not 0. Enqueues one kernel on `stream`.");
  m.def("device_count", &rnnkern::cuda::device_count,
        "Visible CUDA devices; 0 without a driver or a GPU.");
  m.def("stream_synchronize", &rnnkern::cuda::stream_synchronize, py::arg("device"),
        py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Waits for `stream` (tests and benchmarks; the loops themselves never wait).");
  m.attr("architectures") = RNNKERN_CUDA_ARCHITECTURES;
  m.attr("cuda_version") = RNNKERN_CUDA_VERSION;
}
