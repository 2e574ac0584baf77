// The CPU fused update as a function other CPU op families reuse (the corrector's pass 2).
#pragma once
#include "cpu_noise.h"
#include "op_common.h"

namespace fastscore {

// Writes the outputs of `t` (reference.update_): out_o = a x + sum_k b_k y_k [+ c z], z the
// stream at `s` or t.noise. Then t.finish() copies into non-contiguous targets.
void update_cpu_run(UpdateTensors& t, const UpdateCoefs& coefs, const HostStream& s);

}  // namespace fastscore
