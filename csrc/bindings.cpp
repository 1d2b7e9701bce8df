// Python module tgfr._C: the validating entry points of tgfr_api.cpp, nothing else.
#include <torch/extension.h>

#include "tgfr.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused word-region matching scores and InfoNCE (C++ CPU and CUDA kernels)";
  m.def("word_region_scores_forward", &tgfr::word_region_scores_forward, "scores [B_v, B_t]",
        py::arg("words"), py::arg("regions"), py::arg("word_mask"), py::arg("gamma1"), py::arg("gamma2"),
        py::arg("eps"));
  m.def("word_region_scores_backward", &tgfr::word_region_scores_backward, "(grad_words, grad_regions)",
        py::arg("grad_scores"), py::arg("words"), py::arg("regions"), py::arg("word_mask"), py::arg("gamma1"),
        py::arg("gamma2"), py::arg("eps"));
  m.def("info_nce_forward", &tgfr::info_nce_forward, "(loss, lse_rows, lse_cols)", py::arg("a"), py::arg("b"),
        py::arg("temperature"), py::arg("class_ids"), py::arg("offset"), py::arg("symmetric"));
  m.def("info_nce_backward", &tgfr::info_nce_backward, "(grad_a, grad_b, grad_temperature)",
        py::arg("grad_loss"), py::arg("a"), py::arg("b"), py::arg("temperature"), py::arg("class_ids"),
        py::arg("lse_rows"), py::arg("lse_cols"), py::arg("offset"), py::arg("symmetric"));
  m.def("built_with_cuda", &tgfr::built_with_cuda, "whether CUDA kernels were compiled in");
}
