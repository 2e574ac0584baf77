// The CPU step kernel as a function other CPU op families reuse (the corrector's pass 2).
#pragma once
#include <ATen/ATen.h>

#include "op_common.h"

namespace fastscore {

// x <- a*x + b*score + c*z in place (z: the stream at `so`, or `noise`); x_mean <- a*x + b*score.
// coef points at float64 [3, coef_stride] (rows a, b, c), coef_stride 1 or rows of x.
void step_cpu_impl(at::Tensor& x, const c10::optional<at::Tensor>& score, const double* coef, int64_t coef_stride,
                   const SeedOffset& so, const c10::optional<at::Tensor>& noise,
                   const c10::optional<at::Tensor>& x_mean, bool with_noise);

// out <- a*x + b*score + c*z (out may be any layout; x is not modified).
void update_cpu_impl(at::Tensor& out, const at::Tensor& x, const c10::optional<at::Tensor>& score, const double* coef,
                     int64_t coef_stride, const SeedOffset& so, const c10::optional<at::Tensor>& noise,
                     bool with_noise);

}  // namespace fastscore
