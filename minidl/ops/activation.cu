#include "common.cuh"
// activation.cu -- ReLU and sigmoid, forward and backward (see activation.py).
//
// All four kernels are elementwise: one thread owns one element. Backward reads the saved
// forward output y, because both derivatives are functions of it.

// y[i] = max(x[i], 0). Written as "x < 0 ? 0 : x" so that a NaN passes through (NaN < 0 is
// false), as NumPy's maximum does on the CPU.
extern "C" __global__ void relu_forward(long long n, const real_t* __restrict__ x,
                                        real_t* __restrict__ y) {
    FOR_EACH(i, n) {
        const real_t v = x[i];
        y[i] = v < (real_t)0 ? (real_t)0 : v;
    }
}

// dx[i] = g[i] * (y[i] > 0): the subgradient at 0 is taken as 0, as in PyTorch. A product
// rather than a select, to match the CPU's g * (y > 0) exactly, non-finite g included.
extern "C" __global__ void relu_backward(long long n, const real_t* __restrict__ y,
                                         const real_t* __restrict__ g, real_t* __restrict__ dx) {
    FOR_EACH(i, n) {
        dx[i] = g[i] * (real_t)(y[i] > (real_t)0);
    }
}

// y[i] = 1 / (1 + exp(-x[i])). For very negative x, exp(-x) overflows to inf and 1 / inf = 0,
// the correct limit; for very positive x, exp(-x) = 0 gives exactly 1. No branch needed.
extern "C" __global__ void sigmoid_forward(long long n, const real_t* __restrict__ x,
                                           real_t* __restrict__ y) {
    FOR_EACH(i, n) {
        y[i] = (real_t)1 / ((real_t)1 + exp(-x[i]));
    }
}

// dx[i] = g[i] * y[i] * (1 - y[i]).
extern "C" __global__ void sigmoid_backward(long long n, const real_t* __restrict__ y,
                                            const real_t* __restrict__ g, real_t* __restrict__ dx) {
    FOR_EACH(i, n) {
        const real_t s = y[i];
        dx[i] = g[i] * s * ((real_t)1 - s);
    }
}
