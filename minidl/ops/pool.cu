#include "common.cuh"
// Max pooling over (N, C, H, W) planes; see pool.py for the output-size rule.
// argmax holds the flat index h * W + w of each output's maximum inside its own input plane.

// y[p, oh, ow] = max of x[p] over rows oh*sh-ph .. +kh and columns ow*sw-pw .. +kw, clipped to
// the input (padding is -inf; every window holds a real element, so the max starts from the
// first one -- NVRTC has no INFINITY). One thread owns one output element. Rows-then-columns
// scan with a strict '>' keeps the first maximum; 'v != v' lets a NaN win, as in PyTorch.
extern "C" __global__ void max_pool2d_forward(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ y,
        int* __restrict__ argmax, int height, int width, int out_h, int out_w,
        int kh, int kw, int sh, int sw, int ph, int pw) {
    FOR_EACH(i, n) {
        const int ow = (int)(i % out_w);
        const int oh = (int)((i / out_w) % out_h);
        const long long plane = i / ((long long)out_w * out_h);
        const real_t* x_plane = x + plane * height * width;
        const int h0 = oh * sh - ph, w0 = ow * sw - pw;
        const int h_lo = h0 > 0 ? h0 : 0, w_lo = w0 > 0 ? w0 : 0;
        const int h_hi = h0 + kh < height ? h0 + kh : height;
        const int w_hi = w0 + kw < width ? w0 + kw : width;
        int best_at = h_lo * width + w_lo;
        real_t best = x_plane[best_at];
        for (int h = h_lo; h < h_hi; ++h) {
            for (int w = w_lo; w < w_hi; ++w) {
                const real_t v = x_plane[h * width + w];
                if (v > best || v != v) {
                    best = v;
                    best_at = h * width + w;
                }
            }
        }
        y[i] = best;
        argmax[i] = best_at;
    }
}

// grad_x[p, h, w] = sum of grad_y[p, oh, ow] over the outputs (oh, ow) whose window covers
// (h, w) and whose argmax is (h, w). One thread owns one input element and gathers, so there
// are no atomics and the sum is formed in ascending output order -- as on the CPU, same bits.
// Windows covering row h: oh*sh - ph <= h < oh*sh - ph + kh, i.e. oh from
// ceil((h + ph - kh + 1) / sh) to floor((h + ph) / sh); likewise for columns.
extern "C" __global__ void max_pool2d_backward(
        long long n, const real_t* __restrict__ grad_y, const int* __restrict__ argmax,
        real_t* __restrict__ grad_x, int height, int width, int out_h, int out_w,
        int kh, int kw, int sh, int sw, int ph, int pw) {
    FOR_EACH(i, n) {
        const int w = (int)(i % width);
        const int h = (int)((i / width) % height);
        const long long plane = i / ((long long)width * height);
        const int oh_lo = h + ph < kh ? 0 : (h + ph - kh) / sh + 1;
        const int ow_lo = w + pw < kw ? 0 : (w + pw - kw) / sw + 1;
        const int oh_hi = (h + ph) / sh + 1 < out_h ? (h + ph) / sh + 1 : out_h;
        const int ow_hi = (w + pw) / sw + 1 < out_w ? (w + pw) / sw + 1 : out_w;
        const long long offset = plane * out_h * out_w;
        const int me = h * width + w;
        real_t sum = 0;
        for (int oh = oh_lo; oh < oh_hi; ++oh) {
            for (int ow = ow_lo; ow < ow_hi; ++ow) {
                if (argmax[offset + oh * out_w + ow] == me) {
                    sum += grad_y[offset + oh * out_w + ow];
                }
            }
        }
        grad_x[i] = sum;
    }
}
