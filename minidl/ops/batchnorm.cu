#include "common.cuh"
// batchnorm.cu -- batch normalisation over (N, C, P) arrays (see batchnorm.py for the
// formulas). Per-channel sums are formed in two levels, as on the CPU: a sum over the P
// positions of each (example, channel) plane, then a sum over the N planes of a channel, in
// order. planes[] holds the first level channel-major: planes[c * N + b].

// planes[c * N + b] = sum over q of x[b, c, q] (squares = 0) or of (x[b, c, q] - shift[c])^2
// (squares = 1). One thread owns one (channel, example) plane and sums it sequentially.
extern "C" __global__ void batch_norm_plane_sums(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ shift,
        real_t* __restrict__ planes, long long batch, int channels, long long positions,
        int squares) {
    FOR_EACH(i, n) {
        const long long c = i / batch;
        const long long b = i - c * batch;
        const real_t* plane = x + (b * channels + c) * positions;
        real_t sum = (real_t)0;
        if (squares) {
            const real_t m = shift[c];
            for (long long q = 0; q < positions; ++q) {
                const real_t d = plane[q] - m;
                sum += d * d;
            }
        } else {
            for (long long q = 0; q < positions; ++q) {
                sum += plane[q];
            }
        }
        planes[i] = sum;
    }
}

// out[c] = (sum over b of planes[c * N + b]) / count. One thread owns one channel and adds
// its N plane sums in order.
extern "C" __global__ void batch_norm_reduce(
        long long n, const real_t* __restrict__ planes, real_t* __restrict__ out, long long batch,
        real_t count) {
    FOR_EACH(c, n) {
        real_t total = (real_t)0;
        for (long long b = 0; b < batch; ++b) {
            total += planes[c * batch + b];
        }
        out[c] = total / count;
    }
}

// y[b, c, q] = (x[b, c, q] - mean[c]) * invstd[c] * gamma[c] + beta[c]. One thread owns one
// element.
extern "C" __global__ void batch_norm_normalize(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ mean,
        const real_t* __restrict__ invstd, const real_t* __restrict__ gamma,
        const real_t* __restrict__ beta, real_t* __restrict__ y, int channels,
        long long positions) {
    FOR_EACH(i, n) {
        const long long c = (i / positions) % channels;
        y[i] = (x[i] - mean[c]) * invstd[c] * gamma[c] + beta[c];
    }
}

// planes_g[c * N + b] = sum over q of g[b, c, q]; planes_gx[c * N + b] = sum over q of
// g * xhat, xhat = (x - mean[c]) * invstd[c]. One thread owns one (channel, example) plane.
extern "C" __global__ void batch_norm_backward_plane_sums(
        long long n, const real_t* __restrict__ g, const real_t* __restrict__ x,
        const real_t* __restrict__ mean, const real_t* __restrict__ invstd,
        real_t* __restrict__ planes_g, real_t* __restrict__ planes_gx, long long batch,
        int channels, long long positions) {
    FOR_EACH(i, n) {
        const long long c = i / batch;
        const long long b = i - c * batch;
        const long long offset = (b * channels + c) * positions;
        const real_t m = mean[c], s = invstd[c];
        real_t sum_g = (real_t)0, sum_gx = (real_t)0;
        for (long long q = 0; q < positions; ++q) {
            sum_g += g[offset + q];
            sum_gx += g[offset + q] * ((x[offset + q] - m) * s);
        }
        planes_g[i] = sum_g;
        planes_gx[i] = sum_gx;
    }
}

// dx = ((g - sum_g / count) - xhat * sum_gxhat / count) * gamma * invstd with batch
// statistics (training), g * gamma * invstd with running ones. One thread owns one element.
extern "C" __global__ void batch_norm_backward_apply(
        long long n, const real_t* __restrict__ g, const real_t* __restrict__ x,
        const real_t* __restrict__ mean, const real_t* __restrict__ invstd,
        const real_t* __restrict__ gamma, const real_t* __restrict__ sum_g,
        const real_t* __restrict__ sum_gxhat, real_t* __restrict__ dx, int channels,
        long long positions, real_t count, int training) {
    FOR_EACH(i, n) {
        const long long c = (i / positions) % channels;
        const real_t s = invstd[c];
        const real_t scale = gamma[c] * s;
        if (training) {
            const real_t mean_g = sum_g[c] / count, mean_gx = sum_gxhat[c] / count;
            dx[i] = ((g[i] - mean_g) - (x[i] - mean[c]) * s * mean_gx) * scale;
        } else {
            dx[i] = g[i] * scale;
        }
    }
}
