// Operator schemas of mmdeform._C and the Python module entry point.
//
// The module holds no Python functions: importing it loads the library, whose
// static initializers register the operators under torch.ops.mmdeform.
#include <Python.h>
#include <torch/library.h>

#include "ms_deform_attn/ms_deform_attn.h"

TORCH_LIBRARY(mmdeform, m) {
  m.def(
      "ms_deform_attn_forward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights) -> Tensor");
  m.def(
      "ms_deform_attn_backward(Tensor value, Tensor spatial_shapes, Tensor level_start_index, "
      "Tensor sampling_locations, Tensor attention_weights, Tensor grad_output, "
      "bool deterministic) -> (Tensor, Tensor, Tensor)");
}

static PyModuleDef mmdeform_c_module = {PyModuleDef_HEAD_INIT, "_C",
                                        "Compiled operators of mmdeform (see torch.ops.mmdeform).",
                                        -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&mmdeform_c_module); }
