// Picks the recurrent kernels for this CPU at run time.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "recurrent.h"

namespace rnnkern::cpu {
namespace {

template <typename T>
RecurrentKernels<T> kernels_for(const std::string& isa);

template <>
RecurrentKernels<float> kernels_for(const std::string& isa) {
  if (isa == "avx512") return avx512::kernels_float();
  if (isa == "avx2") return avx2::kernels_float();
  return generic::kernels_float();
}

template <>
RecurrentKernels<double> kernels_for(const std::string& isa) {
  if (isa == "avx512") return avx512::kernels_double();
  if (isa == "avx2") return avx2::kernels_double();
  return generic::kernels_double();
}

bool cpu_has(const std::string& isa) {
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return isa == "generic";
}

std::string chosen_isa() {
  const char* env = std::getenv("RNNKERN_ISA");
  if (env && *env) {
    const std::string want(env);
    if (want != "avx512" && want != "avx2" && want != "generic")
      throw std::invalid_argument("RNNKERN_ISA must be one of avx512, avx2, generic, got '" +
                                  want + "'");
    if (!cpu_has(want))
      throw std::invalid_argument("RNNKERN_ISA=" + want + " is not supported by this CPU");
    return want;
  }
  for (const char* isa : {"avx512", "avx2"})
    if (cpu_has(isa)) return isa;
  return "generic";
}

}  // namespace

template <typename T>
const RecurrentKernels<T>& recurrent_kernels() {
  static const RecurrentKernels<T> kernels = kernels_for<T>(chosen_isa());
  return kernels;
}

template const RecurrentKernels<float>& recurrent_kernels<float>();
template const RecurrentKernels<double>& recurrent_kernels<double>();

}  // namespace rnnkern::cpu
