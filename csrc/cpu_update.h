// The CPU fused update as functions other CPU op families reuse (the corrector's pass 2).
#pragma once
#include "cpu_noise.h"
#include "op_common.h"

namespace fastscore {

// Writes the outputs of `t` (reference.update_): out_o = a x + sum_k b_k y_k [+ c z], z the
// stream at `s` or t.noise. Then t.finish() copies into non-contiguous targets.
void update_cpu_run(UpdateTensors& t, const UpdateCoefs& coefs, const HostStream& s);

// The same update of flat elements [begin, end) only, in the calling thread and without
// t.finish(): the per-sample corrector updates each row inside the task that summed it.
void update_cpu_range(UpdateTensors& t, const UpdateCoefs& coefs, const HostStream& s, int64_t begin, int64_t end);

}  // namespace fastscore
