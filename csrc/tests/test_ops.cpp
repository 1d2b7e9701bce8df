// Tests of the CPU kernels through the validating entry points of tgfr_api.cpp: forward
// values against naive ATen code, gradients against central finite differences, and
// argument errors that name the argument. Exit status 0 when every check passes.
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>

#include "tgfr.h"

namespace {

constexpr double kGamma1 = 4.0, kGamma2 = 5.0, kEps = 1e-8;

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::cout << (ok ? "ok      " : "FAILED  ") << what << "\n";
  failures += !ok;
}

void expect_below(double value, double bound, const std::string& what) {
  std::ostringstream detail;
  detail << what << " (" << value << " < " << bound << ")";
  expect(value < bound, detail.str());
}

double max_relative_error(const at::Tensor& actual, const at::Tensor& expected) {
  return (actual - expected).abs().max().item<double>() / expected.abs().max().item<double>();
}

double dot_product(const at::Tensor& x, const at::Tensor& y) { return (x * y).sum().item<double>(); }

// Captions of random lengths in [1, T], the first one full.
at::Tensor random_word_mask(int64_t B_t, int64_t T) {
  auto lengths = at::randint(1, T + 1, {B_t, 1}, at::kLong);
  lengths[0] = T;
  return at::arange(T, at::kLong).unsqueeze(0) < lengths;
}

// One (image, caption) pair at a time, on the caption's valid words only.
at::Tensor naive_word_region_scores(const at::Tensor& words, const at::Tensor& regions, const at::Tensor& mask) {
  auto scores = at::empty({regions.size(0), words.size(0)}, words.options());
  for (int64_t k = 0; k < words.size(0); ++k) {
    const auto w = words[k].index_select(0, mask[k].nonzero().squeeze(1));
    for (int64_t i = 0; i < regions.size(0); ++i) {
      const auto r = regions[i];
      const auto p = at::softmax(at::mm(w, r.t()), 0);
      const auto a = at::softmax(kGamma1 * p, 1);
      const auto c = at::mm(a, r);
      const auto cos = (w * c).sum(1) / (w.norm(2, 1) * c.norm(2, 1)).clamp_min(kEps);
      scores[i][k] = at::logsumexp(kGamma2 * cos, 0);
    }
  }
  return scores;
}

// a [B, D] against b [M, D]; the positive of row i is column offset + i; pairs (i, j) of the
// same class other than the positive are -inf.
at::Tensor naive_info_nce_logits(const at::Tensor& a, const at::Tensor& b, const at::Tensor& temperature,
                                 const at::Tensor& class_ids, int64_t offset) {
  const int64_t B = a.size(0), M = b.size(0);
  const auto row_ids = class_ids.narrow(0, offset, B);
  const auto same = row_ids.unsqueeze(1) == class_ids.unsqueeze(0);
  const auto positive = at::arange(B).unsqueeze(1) + offset == at::arange(M).unsqueeze(0);
  return (at::mm(a, b.t()) / temperature).masked_fill(same.logical_and(positive.logical_not()), -INFINITY);
}

void test_word_region(int64_t B_v, int64_t B_t, int64_t T, int64_t N, int64_t D, double scale,
                      const std::string& name) {
  auto options = at::TensorOptions().dtype(at::kDouble);
  const auto words = scale * at::randn({B_t, T, D}, options);
  const auto regions = scale * at::randn({B_v, N, D}, options);
  const auto mask = random_word_mask(B_t, T);

  const auto scores = tgfr::word_region_scores_forward(words, regions, mask, kGamma1, kGamma2, kEps);
  const double forward_error = max_relative_error(scores, naive_word_region_scores(words, regions, mask));
  expect_below(forward_error, 1e-12, name + ": forward matches naive ATen");

  // d/dh sum(g * scores(words + h v_w, regions + h v_r)) at h = 0, by central differences
  const auto grad_scores = at::randn({B_v, B_t}, options);
  const auto [grad_words, grad_regions] = tgfr::word_region_scores_backward(
      grad_scores, words, regions, mask, kGamma1, kGamma2, kEps);
  const auto dir_words = at::randn_like(words), dir_regions = at::randn_like(regions);
  const double h = 1e-6 * scale;
  auto objective = [&](double step) {
    const auto s = tgfr::word_region_scores_forward(words + step * dir_words, regions + step * dir_regions, mask,
                                                    kGamma1, kGamma2, kEps);
    return dot_product(grad_scores, s);
  };
  const double numeric = (objective(h) - objective(-h)) / (2 * h);
  const double analytic = dot_product(grad_words, dir_words) + dot_product(grad_regions, dir_regions);
  const double gradient_error = std::abs(numeric - analytic) / std::abs(analytic);
  expect_below(gradient_error, 1e-6, name + ": gradient matches finite differences");

  const double padded_grad = grad_words.masked_select(mask.logical_not().unsqueeze(2)).abs().sum().item<double>();
  expect(padded_grad == 0, name + ": padded words get no gradient");
}

void test_info_nce(int64_t B, int64_t M, int64_t offset, bool symmetric, int64_t D, int64_t n_classes,
                   const std::string& name) {
  auto options = at::TensorOptions().dtype(at::kDouble);
  const auto a = at::randn({B, D}, options), b = at::randn({M, D}, options);
  const auto temperature = at::full({}, 0.3, options);
  const auto class_ids = at::randint(0, n_classes, {M}, at::kLong);

  const auto [loss, lse_rows, lse_cols] = tgfr::info_nce_forward(a, b, temperature, class_ids, offset, symmetric);
  const auto logits = naive_info_nce_logits(a, b, temperature, class_ids, offset);
  const auto square = logits.narrow(1, offset, B);  // the columns of the positives
  const auto positive = square.diagonal();
  const auto row_term = (at::logsumexp(logits, 1) - positive).mean();
  const auto naive_loss = symmetric ? 0.5 * (row_term + (at::logsumexp(square, 0) - positive).mean()) : row_term;
  const double loss_error = max_relative_error(loss, naive_loss);
  expect_below(loss_error, 1e-12, name + ": loss matches naive ATen");
  double lse_error = max_relative_error(lse_rows, at::logsumexp(logits, 1));
  if (symmetric)
    lse_error = std::max(lse_error, max_relative_error(lse_cols, at::logsumexp(square, 0)));
  else
    expect(lse_cols.numel() == 0, name + ": no column statistics when one-directional");
  expect_below(lse_error, 1e-12, name + ": row and column log-sum-exps match naive ATen");

  const auto grad_loss = at::full({}, 0.7, options);
  const auto [grad_a, grad_b, grad_t] =
      tgfr::info_nce_backward(grad_loss, a, b, temperature, class_ids, lse_rows, lse_cols, offset, symmetric);
  const auto dir_a = at::randn_like(a), dir_b = at::randn_like(b);
  const double dir_t = 0.05, h = 1e-6;
  auto objective = [&](double step) {
    const auto shifted_t = temperature + step * dir_t;
    return 0.7 * std::get<0>(tgfr::info_nce_forward(a + step * dir_a, b + step * dir_b, shifted_t, class_ids,
                                                    offset, symmetric))
                     .item<double>();
  };
  const double numeric = (objective(h) - objective(-h)) / (2 * h);
  const double analytic = dot_product(grad_a, dir_a) + dot_product(grad_b, dir_b) + grad_t.item<double>() * dir_t;
  const double gradient_error = std::abs(numeric - analytic) / std::abs(analytic);
  expect_below(gradient_error, 1e-6, name + ": gradient matches finite differences");
}

void expect_error(const std::function<void()>& call, const std::string& needle, const std::string& what) {
  try {
    call();
  } catch (const c10::Error& error) {
    const std::string message = error.what_without_backtrace();
    expect(message.find(needle) != std::string::npos, what + ": error names " + needle);
    return;
  }
  expect(false, what + ": throws c10::Error");
}

void test_argument_errors() {
  const auto words = at::randn({3, 4, 5}), regions = at::randn({2, 6, 5});
  const auto mask = at::ones({3, 4}, at::kBool);
  auto forward = [&](const at::Tensor& w, const at::Tensor& r, const at::Tensor& m) {
    return [=] { tgfr::word_region_scores_forward(w, r, m, kGamma1, kGamma2, kEps); };
  };
  expect_error(forward(words[0], regions, mask), "words must have 3 dimensions", "2-D words");
  expect_error(forward(words, at::randn({2, 6, 7}), mask), "must share D", "regions of another width");
  expect_error(forward(words, regions.transpose(1, 2).contiguous().transpose(1, 2), mask),
               "regions must be contiguous", "non-contiguous regions");
  expect_error(forward(words, regions, at::ones({3, 5}, at::kBool)), "word_mask must have shape",
               "word_mask of the wrong shape");
  auto empty_caption = mask.clone();
  empty_caption[1].fill_(false);
  // a caption without words scores -inf against every image (the log-sum-exp of an empty set)
  // and passes no gradient: the Python value checks reject it unless they are turned off
  const auto empty_scores = tgfr::word_region_scores_forward(words, regions, empty_caption, kGamma1, kGamma2, kEps);
  expect(empty_scores.select(1, 1).isneginf().all().item<bool>(), "caption without words scores -inf");
  expect(empty_scores.select(1, 0).isfinite().all().item<bool>(), "the other captions score finite values");
  const auto [empty_grad_words, empty_grad_regions] = tgfr::word_region_scores_backward(
      at::ones({2, 3}), words, regions, empty_caption, kGamma1, kGamma2, kEps);
  expect(empty_grad_words[1].abs().sum().item<double>() == 0, "caption without words gets no gradient");
  expect(empty_grad_regions.isfinite().all().item<bool>(), "region gradients stay finite");
  expect_error([&] {
    tgfr::word_region_scores_backward(at::randn({3, 2}), words, regions, mask, kGamma1, kGamma2, kEps);
  }, "grad_scores must have shape", "grad_scores transposed");
  expect_error([&] {
    tgfr::word_region_scores_backward(at::randn({2, 3}, at::kDouble), words, regions, mask, kGamma1, kGamma2, kEps);
  }, "grad_scores must be Float", "grad_scores in another dtype than the scores");
  expect_error([&] { tgfr::word_region_scores_forward(words, regions, mask, NAN, kGamma2, kEps); },
               "gamma1 must be finite", "gamma1 NaN");
  expect_error([&] { tgfr::word_region_scores_forward(words, regions, mask, kGamma1, kGamma2, -1.0); },
               "eps must be positive and finite", "negative eps");
  // 16-bit inputs: the scores come back in the accumulation dtype, the gradients in the inputs'
  const auto half_words = words.to(at::kBFloat16), half_regions = regions.to(at::kBFloat16);
  const auto half_scores = tgfr::word_region_scores_forward(half_words, half_regions, mask, kGamma1, kGamma2, kEps);
  expect(half_scores.scalar_type() == at::kFloat, "bfloat16 inputs give float32 scores");
  const auto [half_grad_words, half_grad_regions] = tgfr::word_region_scores_backward(
      at::ones({2, 3}), half_words, half_regions, mask, kGamma1, kGamma2, kEps);
  expect(half_grad_words.scalar_type() == at::kBFloat16 && half_grad_regions.scalar_type() == at::kBFloat16,
         "bfloat16 inputs get bfloat16 gradients");

  const auto a = at::randn({4, 8}, at::kDouble), b = at::randn({4, 8}, at::kDouble);
  const auto temperature = at::full({}, 0.1, at::kDouble);
  expect_error([&] { tgfr::info_nce_forward(a, b, temperature.to(at::kFloat), at::arange(4), 0, true); },
               "temperature must be Double", "float32 temperature for float64 inputs");
  expect_error([&] { tgfr::info_nce_forward(a, b, temperature, at::arange(5), 0, true); }, "class_ids must be",
               "class_ids of the wrong length");
  expect_error([&] { tgfr::info_nce_forward(a, b.narrow(0, 0, 3), temperature, at::arange(3), 0, true); },
               "offset + B must be at most M", "b with fewer rows than a");
  expect_error([&] { tgfr::info_nce_forward(a, b, temperature, at::arange(4), 1, true); },
               "offset + B must be at most M", "offset past the end of b");
  expect_error([&] { tgfr::info_nce_forward(a, b, temperature, at::arange(4), -1, true); },
               "offset must be non-negative", "negative offset");
  expect_error([&] { tgfr::info_nce_forward(a, at::randn({4, 7}, at::kDouble), temperature, at::arange(4), 0, true); },
               "must share D", "b of another width");
  const auto lse = at::zeros({4}, at::kDouble);
  expect_error([&] {
    tgfr::info_nce_backward(at::ones({}, at::kDouble), a, b, temperature, at::arange(4), lse, lse, 0, false);
  }, "lse_cols must have shape [0]", "column statistics when one-directional");
}

}  // namespace

int main() {
  at::manual_seed(0);
  test_word_region(3, 4, 5, 7, 9, 1.0, "word_region small");
  test_word_region(5, 30, 22, 13, 16, 1.0, "word_region several caption blocks");
  test_word_region(2, 3, 1, 1, 5, 1.0, "word_region T=1 N=1");
  test_word_region(2, 3, 4, 5, 6, 1e-5, "word_region clamped cosine");
  test_info_nce(5, 5, 0, true, 3, 5, "info_nce small");
  test_info_nce(300, 300, 0, true, 17, 60, "info_nce several tiles, repeated classes");
  test_info_nce(70, 333, 150, true, 9, 40, "info_nce rectangular, offset, repeated classes");
  test_info_nce(70, 333, 263, false, 9, 40, "info_nce rectangular, last offset, one-directional");
  test_info_nce(300, 301, 1, false, 17, 1000, "info_nce several tiles, one-directional");
  test_argument_errors();
  std::cout << (failures ? "FAILED: " + std::to_string(failures) + " check(s)" : std::string("all checks passed"))
            << "\n";
  return failures ? 1 : 0;
}
