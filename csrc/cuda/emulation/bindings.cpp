// The CUDA entry points, emulated on the CPU, as torch.ops.tgfr_cuda_emulated.* for the
// tests (a torch library rather than a Python module: no pybind11/Python headers to parse).
#include <torch/library.h>

#include "tgfr.h"

namespace tgfr::cuda_common {
alignas(16) unsigned char dynamic_shared_bytes[1 << 16];  // one block runs at a time
}

TORCH_LIBRARY(tgfr_cuda_emulated, m) {
  m.def("word_region_scores_forward", &tgfr::cuda::word_region_scores_forward);
  m.def("word_region_scores_backward", &tgfr::cuda::word_region_scores_backward);
  m.def("info_nce_forward", &tgfr::cuda::info_nce_forward);
  m.def("info_nce_backward", &tgfr::cuda::info_nce_backward);
}
