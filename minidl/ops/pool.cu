#include "common.cuh"
// Max pooling over (N, C, H, W) planes; see pool.py for the output-size rule. A window's taps
// are dilation apart: rows oh*sh - ph + r*dh for r < kh, likewise columns.
// argmax holds the flat index h * W + w of each output's maximum inside its own input plane.

// y[p, oh, ow] = max of x[p] over rows oh*sh-ph + r*dh (r < kh) and columns ow*sw-pw + q*dw
// (q < kw), clipped to the input (padding is -inf; every window holds a real element, so the max starts from the
// first one -- NVRTC has no INFINITY). One thread owns one output element. Rows-then-columns
// scan with a strict '>' keeps the first maximum; 'v != v' lets a NaN win, as in PyTorch.
extern "C" __global__ void max_pool2d_forward(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ y,
        int* __restrict__ argmax, int height, int width, int out_h, int out_w,
        int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw) {
    FOR_EACH(i, n) {
        const int ow = (int)(i % out_w);
        const int oh = (int)((i / out_w) % out_h);
        const long long plane = i / ((long long)out_w * out_h);
        const real_t* x_plane = x + plane * height * width;
        const int h0 = oh * sh - ph, w0 = ow * sw - pw;
        // the first tap inside the input: h0, h0 + dh, ... >= 0
        const int h_lo = h0 >= 0 ? h0 : h0 + (-h0 + dh - 1) / dh * dh;
        const int w_lo = w0 >= 0 ? w0 : w0 + (-w0 + dw - 1) / dw * dw;
        const int h_end = h0 + (kh - 1) * dh + 1, w_end = w0 + (kw - 1) * dw + 1;
        const int h_hi = h_end < height ? h_end : height;
        const int w_hi = w_end < width ? w_end : width;
        int best_at = h_lo * width + w_lo;
        real_t best = x_plane[best_at];
        for (int h = h_lo; h < h_hi; h += dh) {
            for (int w = w_lo; w < w_hi; w += dw) {
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
// Windows whose span e = (k - 1) * d + 1 covers row h: oh*sh - ph <= h < oh*sh - ph + eh, i.e.
// oh from ceil((h + ph - eh + 1) / sh) to floor((h + ph) / sh); likewise for columns. (A window
// may span h without a tap on it; the argmax test below skips those.)
extern "C" __global__ void max_pool2d_backward(
        long long n, const real_t* __restrict__ grad_y, const int* __restrict__ argmax,
        real_t* __restrict__ grad_x, int height, int width, int out_h, int out_w,
        int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw) {
    const int eh = (kh - 1) * dh + 1, ew = (kw - 1) * dw + 1;
    FOR_EACH(i, n) {
        const int w = (int)(i % width);
        const int h = (int)((i / width) % height);
        const long long plane = i / ((long long)width * height);
        const int oh_lo = h + ph < eh ? 0 : (h + ph - eh) / sh + 1;
        const int ow_lo = w + pw < ew ? 0 : (w + pw - ew) / sw + 1;
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
