// Stands in for the CUDA toolkit's math_constants.h in the CPU emulation of the
// kernels: the constants the kernels use.
#pragma once

#include <limits>

#define CUDART_NAN_F (std::numeric_limits<float>::quiet_NaN())
