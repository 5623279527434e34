#include "common.cuh"
// avgpool.cu -- average pooling over (planes, H, W), for avg_pool2d and adaptive_avg_pool2d
// alike (see avgpool.py): the windows come as tables. Output row i sums input rows
// [h_lo[i], h_hi[i]) and its divisor is div_h[i] * div_w[j], or divisor_override if non-zero;
// input row h is held by the windows of output rows [row_first[h], row_end[h]).

// y[p, i, j] = sum of x[p, h_lo[i]:h_hi[i], w_lo[j]:w_hi[j]] (rows, then columns) / divisor.
// One thread owns one output element.
extern "C" __global__ void avg_pool2d_forward(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ y,
        const int* __restrict__ h_lo, const int* __restrict__ h_hi, const int* __restrict__ w_lo,
        const int* __restrict__ w_hi, const int* __restrict__ div_h, const int* __restrict__ div_w,
        real_t divisor_override, int height, int width, int out_h, int out_w) {
    FOR_EACH(o, n) {
        const int j = (int)(o % out_w);
        const int i = (int)((o / out_w) % out_h);
        const real_t* plane = x + (o / ((long long)out_w * out_h)) * height * width;
        real_t total = (real_t)0;
        for (int h = h_lo[i]; h < h_hi[i]; ++h) {
            for (int w = w_lo[j]; w < w_hi[j]; ++w) {
                total += plane[h * width + w];
            }
        }
        if (divisor_override != (real_t)0) {
            y[o] = total / divisor_override;
        } else {
            y[o] = total / (real_t)(div_h[i] * div_w[j]);
        }
    }
}

// grad_x[p, h, w] = sum of g[p, i, j] / divisor(i, j) over the outputs whose window holds
// (h, w), in ascending (i, j) -- the Numba kernel's order. One thread owns one input element
// and gathers: no atomics.
extern "C" __global__ void avg_pool2d_backward(
        long long n, const real_t* __restrict__ g, real_t* __restrict__ grad_x,
        const int* __restrict__ div_h, const int* __restrict__ div_w, real_t divisor_override,
        const int* __restrict__ row_first, const int* __restrict__ row_end,
        const int* __restrict__ col_first, const int* __restrict__ col_end, int height,
        int width, int out_h, int out_w) {
    FOR_EACH(e, n) {
        const int w = (int)(e % width);
        const int h = (int)((e / width) % height);
        const real_t* plane = g + (e / ((long long)width * height)) * out_h * out_w;
        real_t total = (real_t)0;
        for (int i = row_first[h]; i < row_end[h]; ++i) {
            for (int j = col_first[w]; j < col_end[w]; ++j) {
                if (divisor_override != (real_t)0) {
                    total += plane[i * out_w + j] / divisor_override;
                } else {
                    total += plane[i * out_w + j] / (real_t)(div_h[i] * div_w[j]);
                }
            }
        }
        grad_x[e] = total;
    }
}
