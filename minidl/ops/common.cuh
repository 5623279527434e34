// common.cuh -- what every kernel in minidl/ops shares. Each .cu file starts with
// #include "common.cuh", which minidl/cuda.py replaces by this text before compiling.
//
// A kernel is  extern "C" __global__ void <op>_<step>(long long n, ...)  written against
// real_t (float or double, chosen when the file is compiled). n is the number of items the
// kernel owns -- output elements, tiles, pixels -- and the body is one grid-stride loop over
// them: thread t of a grid of T threads owns items t, t + T, t + 2T, ... So any grid size gives
// the same result: the GPU launches enough blocks to fill the device, the CPU test shim
// (minidl/testing/cuda_on_cpu.h) a few. The comment above each kernel gives its formula and
// says which item a thread owns.
#define FOR_EACH(i, n)                                                          \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)
