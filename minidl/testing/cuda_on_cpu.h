// cuda_on_cpu.h -- just enough of CUDA for minidl's kernels to compile as ordinary C++.
//
// minidl's kernels are grid-stride loops in which each thread owns a set of outputs and
// touches no shared memory, so a CPU can run them faithfully by calling the kernel once per
// (block, thread) pair with these globals set. That is what cuda_on_cpu.py does; it lets a
// machine without a GPU check every .cu file against the NumPy/Numba kernels.
// Not covered: shared memory, __syncthreads, warp intrinsics, real concurrency.
#pragma once
#include <cmath>
#include <cfloat>

struct dim3 { unsigned int x, y, z; };
static dim3 threadIdx = {0, 0, 0}, blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, gridDim = {1, 1, 1};

extern "C" void minidl_set_thread(unsigned int block, unsigned int thread,
                                  unsigned int threads_per_block, unsigned int blocks) {
    blockIdx.x = block; threadIdx.x = thread; blockDim.x = threads_per_block; gridDim.x = blocks;
}

#define __global__
#define __device__
#define __constant__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

// One thread runs at a time here, so an atomic add is a plain add.
static inline float atomicAdd(float* address, float value) { float old = *address; *address += value; return old; }
static inline double atomicAdd(double* address, double value) { double old = *address; *address += value; return old; }
static inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
    unsigned long long old = *address; *address += value; return old;
}
// CUDA's fast-math intrinsics; glibc declares functions of these names, so macros it is.
#define __expf(x) std::exp((float)(x))
#define __logf(x) std::log((float)(x))
#define __powf(x, y) std::pow((float)(x), (float)(y))
// Products that the GPU must not fuse into an fma; the CPU build fuses nothing anyway.
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
using std::exp; using std::log; using std::pow; using std::sqrt; using std::fabs;
using std::fmax; using std::fmin; using std::log1p; using std::expm1; using std::tanh;
