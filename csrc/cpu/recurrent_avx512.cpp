// The recurrent kernels built for avx512 (compile flags set in CMakeLists.txt).
#define RNNKERN_ISA avx512
#define RNNKERN_ISA_NAME "avx512"
#define RNNKERN_VECTOR_BYTES 64
#include "recurrent_kernel.h"
