// Stands in for the CUDA toolkit's cuda_runtime.h in the CPU emulation of the
// kernels (this folder comes first on the include path): the built-ins only.
#pragma once

#include "../cuda_builtins.h"
