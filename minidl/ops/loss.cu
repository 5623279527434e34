#include "common.cuh"
// loss.cu -- softmax cross-entropy and binary cross-entropy with logits (see loss.py).
//
// Stability: every exp sees an argument <= 0 (the row max is subtracted first, or -|x| is
// used), so nothing overflows even for logits of 1e4 or more. A running max starts from the
// first element, not from -INFINITY (NVRTC does not define INFINITY).
//
// The incoming gradient of the scalar loss, g, is read through a pointer (one element), so
// the host never has to copy it back from the GPU before launching backward.

// Row statistics and per-row loss for logits x (rows x k, row-major), labels in [0, k):
//   m[r] = max_j x[r, j],  log_sum[r] = log(sum_j exp(x[r, j] - m[r])),
//   row_loss[r] = (m[r] - x[r, label[r]]) + log_sum[r]   (= logsumexp(x[r]) - x[r, label[r]])
// One thread owns one row (n = rows) and reduces it sequentially: two passes, the first for
// the max, the second for the sum of exponentials.
extern "C" __global__ void softmax_cross_entropy_forward(
        long long n, const real_t* __restrict__ x, const long long* __restrict__ labels,
        real_t* __restrict__ row_loss, real_t* __restrict__ row_max, real_t* __restrict__ log_sum,
        long long k) {
    FOR_EACH(r, n) {
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

// grad[r, j] = (softmax(x[r])_j - [j == label[r]]) * g / rows, with the softmax recomputed from
// the saved row statistics as exp((x - m) - log_sum). One thread owns one element
// (n = rows * k), since elements are independent once the row statistics are known.
extern "C" __global__ void softmax_cross_entropy_backward(
        long long n, const real_t* __restrict__ x, const long long* __restrict__ labels,
        const real_t* __restrict__ row_max, const real_t* __restrict__ log_sum,
        const real_t* __restrict__ g, real_t* __restrict__ grad, long long rows, long long k) {
    const real_t scale = g[0] / (real_t)rows;
    FOR_EACH(i, n) {
        const long long r = i / k;
        const long long j = i - r * k;
        const real_t p = exp((x[i] - row_max[r]) - log_sum[r]);
        grad[i] = (j == labels[r] ? p - (real_t)1 : p) * scale;
    }
}

// Elementwise binary cross-entropy of sigmoid(x) against t, in the form that cannot overflow:
//   loss[i] = max(x, 0) - x * t + log1p(exp(-|x|)).
// One thread owns one element; the mean is taken in Python.
extern "C" __global__ void bce_with_logits_forward(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ t,
        real_t* __restrict__ loss) {
    FOR_EACH(i, n) {
        const real_t v = x[i];
        const real_t positive_part = v > (real_t)0 ? v : (real_t)0;
        loss[i] = log1p(exp(-fabs(v))) - v * t[i] + positive_part;
    }
}

// grad[i] = (sigmoid(x[i]) - t[i]) * g / n; sigmoid as 1 / (1 + exp(-x)), whose overflow to
// 1 / inf = 0 for x << 0 is the right limit. One thread owns one element.
extern "C" __global__ void bce_with_logits_backward(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ t,
        const real_t* __restrict__ g, real_t* __restrict__ grad) {
    const real_t scale = g[0] / (real_t)n;
    FOR_EACH(i, n) {
        const real_t s = (real_t)1 / ((real_t)1 + exp(-x[i]));
        grad[i] = (s - t[i]) * scale;
    }
}
