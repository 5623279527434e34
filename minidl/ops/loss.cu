// loss.cu -- softmax cross-entropy and binary cross-entropy with logits (see loss.py).
//
// Stability: every exp sees an argument <= 0 (the row max is subtracted first, or -|x| is
// used), so nothing overflows even for logits of 1e4 or more. A running max starts from the
// first element, not from -INFINITY (NVRTC does not define INFINITY).
//
// The incoming gradient of the scalar loss, g, is read through a pointer (one element), so
// the host never has to copy it back from the GPU before launching backward.

// Row statistics and per-row loss for logits x (n x k, row-major), labels in [0, k):
//   m[r] = max_j x[r, j],  log_sum[r] = log(sum_j exp(x[r, j] - m[r])),
//   row_loss[r] = (m[r] - x[r, label[r]]) + log_sum[r]   (= logsumexp(x[r]) - x[r, label[r]])
// One thread owns one row (grid-stride over rows) and reduces it sequentially: two passes,
// the first for the max, the second for the sum of exponentials.
extern "C" __global__ void softmax_cross_entropy_forward(
        const real_t* __restrict__ x, const long long* __restrict__ labels,
        real_t* __restrict__ row_loss, real_t* __restrict__ row_max, real_t* __restrict__ log_sum,
        long long n, long long k) {
    for (long long r = blockIdx.x * (long long)blockDim.x + threadIdx.x; r < n;
         r += (long long)blockDim.x * gridDim.x) {
        const real_t* row = x + r * k;
        real_t m = row[0];
        for (long long j = 1; j < k; ++j) {
            m = row[j] > m ? row[j] : m;
        }
        real_t s = (real_t)0;
        for (long long j = 0; j < k; ++j) {
            s += exp(row[j] - m);
        }
        const real_t ls = log(s);
        row_max[r] = m;
        log_sum[r] = ls;
        row_loss[r] = (m - row[labels[r]]) + ls;
    }
}

// grad[r, j] = (softmax(x[r])_j - [j == label[r]]) * g / n, with the softmax recomputed from
// the saved row statistics as exp((x - m) - log_sum). One thread owns one element (grid-stride
// over all n * k), since elements are independent once the row statistics are known.
extern "C" __global__ void softmax_cross_entropy_backward(
        const real_t* __restrict__ x, const long long* __restrict__ labels,
        const real_t* __restrict__ row_max, const real_t* __restrict__ log_sum,
        const real_t* __restrict__ g, real_t* __restrict__ grad, long long n, long long k) {
    const real_t scale = g[0] / (real_t)n;
    const long long total = n * k;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)blockDim.x * gridDim.x) {
        const long long r = i / k;
        const long long j = i - r * k;
        const real_t p = exp((x[i] - row_max[r]) - log_sum[r]);
        grad[i] = (j == labels[r] ? p - (real_t)1 : p) * scale;
    }
}

// Elementwise binary cross-entropy of sigmoid(x) against t, in the form that cannot overflow:
//   loss[i] = max(x, 0) - x * t + log1p(exp(-|x|)).
// Grid-stride loop: thread t owns elements t, t + stride, ...; the mean is taken in Python.
extern "C" __global__ void bce_with_logits_forward(
        const real_t* __restrict__ x, const real_t* __restrict__ t, real_t* __restrict__ loss,
        long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const real_t v = x[i];
        const real_t positive_part = v > (real_t)0 ? v : (real_t)0;
        loss[i] = log1p(exp(-fabs(v))) - v * t[i] + positive_part;
    }
}

// grad[i] = (sigmoid(x[i]) - t[i]) * g / n; sigmoid as 1 / (1 + exp(-x)), whose overflow to
// 1 / inf = 0 for x << 0 is the right limit. Grid-stride loop, one element per iteration.
extern "C" __global__ void bce_with_logits_backward(
        const real_t* __restrict__ x, const real_t* __restrict__ t, const real_t* __restrict__ g,
        real_t* __restrict__ grad, long long n) {
    const real_t scale = g[0] / (real_t)n;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        const real_t s = (real_t)1 / ((real_t)1 + exp(-x[i]));
        grad[i] = (s - t[i]) * scale;
    }
}
