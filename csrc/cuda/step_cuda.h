// The CUDA fused update as a function other CUDA op families reuse (the corrector's pass 2).
#pragma once
#include "../op_common.h"

namespace fastscore {
namespace cuda {

// Writes the outputs of `t` (reference.update_) on the current stream, z the stream at `s`
// or t.noise; then t.finish() copies into non-contiguous targets.
void update_cuda_run(UpdateTensors& t, const UpdateCoefs& coefs, const Stream& s);

}  // namespace cuda
}  // namespace fastscore
