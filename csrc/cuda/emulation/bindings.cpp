// The CUDA entry points, emulated on the CPU, as a Python module for the tests.
#include <torch/extension.h>

#include "tgfr.h"

namespace tgfr::cuda_common {
alignas(16) unsigned char dynamic_shared_bytes[1 << 16];  // one block runs at a time
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("word_region_scores_forward", &tgfr::cuda::word_region_scores_forward);
  m.def("word_region_scores_backward", &tgfr::cuda::word_region_scores_backward);
  m.def("info_nce_forward", &tgfr::cuda::info_nce_forward);
  m.def("info_nce_backward", &tgfr::cuda::info_nce_backward);
}
