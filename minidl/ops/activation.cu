// activation.cu -- ReLU and sigmoid, forward and backward (see activation.py).
//
// All four kernels are elementwise grid-stride loops: thread t owns elements
// i = t, t + stride, t + 2 * stride, ... with stride = blockDim.x * gridDim.x.
// Backward reads the saved forward output y, because both derivatives are functions of it.

// y[i] = max(x[i], 0). Written as "x < 0 ? 0 : x" so that a NaN passes through (NaN < 0 is
// false), as NumPy's maximum does on the CPU.
extern "C" __global__ void relu_forward(const real_t* __restrict__ x, real_t* __restrict__ y,
                                        long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const real_t v = x[i];
        y[i] = v < (real_t)0 ? (real_t)0 : v;
    }
}

// dx[i] = g[i] * (y[i] > 0): the subgradient at 0 is taken as 0, as in PyTorch. A product
// rather than a select, to match the CPU's g * (y > 0) exactly, non-finite g included.
extern "C" __global__ void relu_backward(const real_t* __restrict__ y, const real_t* __restrict__ g,
                                         real_t* __restrict__ dx, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        dx[i] = g[i] * (real_t)(y[i] > (real_t)0);
    }
}

// y[i] = 1 / (1 + exp(-x[i])). For very negative x, exp(-x) overflows to inf and 1 / inf = 0,
// the correct limit; for very positive x, exp(-x) = 0 gives exactly 1. No branch needed.
extern "C" __global__ void sigmoid_forward(const real_t* __restrict__ x, real_t* __restrict__ y,
                                           long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        y[i] = (real_t)1 / ((real_t)1 + exp(-x[i]));
    }
}

// dx[i] = g[i] * y[i] * (1 - y[i]).
extern "C" __global__ void sigmoid_backward(const real_t* __restrict__ y, const real_t* __restrict__ g,
                                            real_t* __restrict__ dx, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const real_t s = y[i];
        dx[i] = g[i] * s * ((real_t)1 - s);
    }
}
