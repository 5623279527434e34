#include "common.cuh"
// space_to_depth.cu -- s x s blocks of pixels as channels (see space_to_depth.py): x (N, C, H, W)
// and y (N, C*s*s, OH, OW), padding (pad_h, pad_w) of zeros before the input.

// y[n, c*s*s + r*s + q, i, j] = x[n, c, s*i + r - pad_h, s*j + q - pad_w], 0 outside x.
// One thread owns one output element.
extern "C" __global__ void space_to_depth_forward(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ y, int channels,
        int height, int width, int block, int pad_h, int pad_w, int out_h, int out_w) {
    FOR_EACH(e, n) {
        const int j = (int)(e % out_w);
        const int i = (int)((e / out_w) % out_h);
        const long long plane = e / ((long long)out_w * out_h);  // n * C' + c'
        const int out_channels = channels * block * block;
        const int channel = (int)(plane % out_channels);
        const long long image = plane / out_channels;
        const int c = channel / (block * block);
        const int r = (channel / block) % block;
        const int q = channel % block;
        const int row = block * i + r - pad_h;
        const int col = block * j + q - pad_w;
        y[e] = (row >= 0 && row < height && col >= 0 && col < width)
                   ? x[((image * channels + c) * height + row) * width + col]
                   : (real_t)0;
    }
}

// dx[n, c, h, w] = dy[n, c*s*s + ((h + pad_h) % s)*s + (w + pad_w) % s, (h + pad_h) / s,
// (w + pad_w) / s], 0 past the output's edge. One thread owns one input element.
extern "C" __global__ void space_to_depth_backward(
        long long n, const real_t* __restrict__ dy, real_t* __restrict__ dx, int channels,
        int height, int width, int block, int pad_h, int pad_w, int out_h, int out_w) {
    FOR_EACH(e, n) {
        const int w = (int)(e % width);
        const int h = (int)((e / width) % height);
        const long long plane = e / ((long long)width * height);  // n * C + c
        const int c = (int)(plane % channels);
        const long long image = plane / channels;
        const int i = (h + pad_h) / block, r = (h + pad_h) % block;
        const int j = (w + pad_w) / block, q = (w + pad_w) % block;
        const int out_channels = channels * block * block;
        const long long channel = image * out_channels + (c * block + r) * block + q;
        dx[e] = (i < out_h && j < out_w) ? dy[(channel * out_h + i) * out_w + j] : (real_t)0;
    }
}
