// The CUDA step kernel as a function other CUDA op families reuse (the corrector's pass 2).
#pragma once
#include <ATen/ATen.h>

#include "../op_common.h"

namespace fastscore {
namespace cuda {

// x <- a*x + b*score + c*z in place, x_mean <- a*x + b*score. Coefficients from `coef`
// (device float64 [3, 1 or rows]) or, when it is null, from scalar_coef.
void step_cuda_impl(at::Tensor& x, const c10::optional<at::Tensor>& score, const at::Tensor* coef,
                    const double scalar_coef[3], const SeedOffset& so, const c10::optional<at::Tensor>& noise,
                    const c10::optional<at::Tensor>& x_mean, bool with_noise);

}  // namespace cuda
}  // namespace fastscore
