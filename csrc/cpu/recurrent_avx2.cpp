// The recurrent kernels built for avx2 (compile flags set in CMakeLists.txt).
#define RNNKERN_ISA avx2
#define RNNKERN_ISA_NAME "avx2"
#define RNNKERN_VECTOR_BYTES 32
#include "recurrent_kernel.h"
