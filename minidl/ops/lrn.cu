#include "common.cuh"
// Local response normalisation across channels; see lrn.py for the formulas.
// Arrays are (N, C, P) with P = H*W pixels, so channel j of the same pixel sits P elements
// further on. A window around channel c spans c - before ... c + after (before = size/2,
// after = (size-1)/2), clipped to [0, C).

// y = x / s^beta with s = k + alpha * sum of x^2 over the window of this element's channel,
// at the same (n, pixel); s is written to scale when backward will need it. One thread owns
// one output element and sums its own window (size loads, coalesced across the pixels).
extern "C" __global__ void lrn_forward(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ y,
        real_t* __restrict__ scale, int save_scale, int channels, long long pixels,
        int before, int after, real_t alpha, real_t beta, real_t k) {
    FOR_EACH(i, n) {
        const int c = (int)((i / pixels) % channels);
        const long long channel0 = i - (long long)c * pixels;  // channel 0, same n and pixel
        const int lo = c - before > 0 ? c - before : 0;
        const int hi = c + after < channels - 1 ? c + after : channels - 1;
        real_t sum = 0;
        for (int j = lo; j <= hi; ++j) {
            const real_t v = x[channel0 + j * pixels];
            sum += v * v;
        }
        const real_t s = k + alpha * sum;
        y[i] = x[i] / pow(s, beta);
        if (save_scale) {
            scale[i] = s;
        }
    }
}

// grad_x[j] = g[j] / s[j]^beta - 2 alpha beta x[j] * sum of g[c] x[c] / (s[c]^beta s[c])
// over the channels c whose window holds j: c = j - after ... j + before (mirrored window).
// One thread owns one input-gradient element and gathers from its neighbours: no atomics.
extern "C" __global__ void lrn_backward(
        long long n, const real_t* __restrict__ grad_y, const real_t* __restrict__ x,
        const real_t* __restrict__ scale, real_t* __restrict__ grad_x, int channels,
        long long pixels, int before, int after, real_t beta, real_t two_alpha_beta) {
    FOR_EACH(i, n) {
        const int j = (int)((i / pixels) % channels);
        const long long channel0 = i - (long long)j * pixels;
        const int lo = j - after > 0 ? j - after : 0;
        const int hi = j + before < channels - 1 ? j + before : channels - 1;
        real_t sum = 0;
        for (int c = lo; c <= hi; ++c) {
            const long long at = channel0 + c * pixels;
            const real_t s = scale[at];
            sum += grad_y[at] * x[at] / (pow(s, beta) * s);
        }
        grad_x[i] = grad_y[i] / pow(scale[i], beta) - two_alpha_beta * x[i] * sum;
    }
}
