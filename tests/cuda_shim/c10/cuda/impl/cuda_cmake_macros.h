#pragma once
// The CPU wheel of torch omits this generated header of c10/cuda; a CUDA build has it.
#define C10_CUDA_BUILD_SHARED_LIBS
