// The recurrent kernels built for generic (compile flags set in CMakeLists.txt).
#define RNNKERN_ISA generic
#define RNNKERN_ISA_NAME "generic"
#define RNNKERN_VECTOR_BYTES 16
#include "recurrent_kernel.h"
