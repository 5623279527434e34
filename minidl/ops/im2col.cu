#include "common.cuh"
// im2col.cu -- the two data-movement kernels of convolution by im2col + GEMM (see im2col.py).
//
// The multiply-adds themselves are matrix products done by cuBLAS; these kernels only
// rearrange data around them. Both work on one chunk of B images:
//
//   x     (B, C, H, W)                  the input chunk
//   cols  (C*kH*kW, B*OH*OW)            row (c, ki, kj), column (b, oh, ow)
//   cols[(c, ki, kj), (b, oh, ow)] = x[b, c, oh*sH + ki*dH - pH, ow*sW + kj*dW - pW]   (0 outside x)

// One thread owns one column element (n = cols.size): each element is one read of x (or a
// zero from the padding). Consecutive threads take consecutive ow, so the writes coalesce.
extern "C" __global__ void conv_im2col(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ cols, long long batch,
        int channels, int height, int width, int kernel_h, int kernel_w, int stride_h,
        int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int out_h, int out_w) {
    const long long out_plane = (long long)out_h * out_w;
    const long long n_columns = batch * out_plane;
    FOR_EACH(i, n) {
        const long long row = i / n_columns;
        const long long column = i - row * n_columns;
        const int kj = (int)(row % kernel_w);
        const int ki = (int)((row / kernel_w) % kernel_h);
        const long long c = row / ((long long)kernel_w * kernel_h);
        const long long b = column / out_plane;
        const long long pixel = column - b * out_plane;
        const int oh = (int)(pixel / out_w);
        const int ow = (int)(pixel - (long long)oh * out_w);
        const int h = oh * stride_h + ki * dilation_h - pad_h;
        const int w = ow * stride_w + kj * dilation_w - pad_w;
        real_t value = (real_t)0;
        if (h >= 0 && h < height && w >= 0 && w < width) {
            value = x[((b * channels + c) * height + h) * width + w];
        }
        cols[i] = value;
    }
}

// The adjoint of im2col, as a gather: dx[b, c, h, w] sums the column entries that element was
// copied into, i.e. every (ki, kj) with oh = (h + pH - ki*dH) / sH and ow = (w + pW - kj*dW) / sW
// whole numbers inside the output. One thread owns one input element (n = dx.size) and writes
// only it -- no atomics -- adding the taps in the same (ki, kj) order as the Numba col2im, so
// the two give the same sums.
extern "C" __global__ void conv_col2im(
        long long n, const real_t* __restrict__ cols, real_t* __restrict__ dx, long long batch,
        int channels, int height, int width, int kernel_h, int kernel_w, int stride_h,
        int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int out_h, int out_w) {
    const long long out_plane = (long long)out_h * out_w;
    const long long n_columns = batch * out_plane;
    FOR_EACH(i, n) {
        const int w = (int)(i % width);
        const int h = (int)((i / width) % height);
        const long long bc = i / ((long long)width * height);
        const long long c = bc % channels;
        const long long b = bc / channels;
        real_t sum = (real_t)0;
        for (int ki = 0; ki < kernel_h; ++ki) {
            const int th = h + pad_h - ki * dilation_h;  // = oh * sH when tap ki of row oh read row h
            if (th < 0) break;              // th only decreases as ki grows
            if (th % stride_h != 0) continue;
            const int oh = th / stride_h;
            if (oh >= out_h) continue;
            for (int kj = 0; kj < kernel_w; ++kj) {
                const int tw = w + pad_w - kj * dilation_w;
                if (tw < 0) break;
                if (tw % stride_w != 0) continue;
                const int ow = tw / stride_w;
                if (ow >= out_w) continue;
                const long long row = (c * kernel_h + ki) * kernel_w + kj;
                sum += cols[row * n_columns + b * out_plane + (long long)oh * out_w + ow];
            }
        }
        dx[i] = sum;
    }
}

// The GEMM's (O, B*P) layout turned into the output's (B, O, P), P = OH*OW, in one pass:
// y[b, o, p] = product[o, b*P + p] + bias[o] (if has_bias), then max(., 0) if relu (NaN stays
// NaN, as on the CPU). One thread owns one output element (n = y.size); consecutive threads
// take consecutive p, so both the read and the write coalesce.
extern "C" __global__ void conv_to_output(
        long long n, const real_t* __restrict__ product, const real_t* __restrict__ bias,
        real_t* __restrict__ y, long long batch, int out_channels, long long pixels, int has_bias,
        int relu) {
    FOR_EACH(i, n) {
        const long long p = i % pixels;
        const long long o = (i / pixels) % out_channels;
        const long long b = i / (pixels * out_channels);
        real_t v = product[o * batch * pixels + b * pixels + p];
        if (has_bias) v += bias[o];
        if (relu && v < (real_t)0) v = (real_t)0;
        y[i] = v;
    }
}

// The inverse layout change, for backward: dy[o, b*P + p] = grad[b, o, p], times (y > 0) if
// the ReLU was fused (a product, as relu's backward, so a non-finite gradient at an inactive
// unit gives NaN alike). One thread owns one element of dy (n = grad.size), taken in grad's
// order so the reads coalesce.
extern "C" __global__ void conv_to_product(
        long long n, const real_t* __restrict__ grad, const real_t* __restrict__ y,
        real_t* __restrict__ dy, long long batch, int out_channels, long long pixels, int relu) {
    FOR_EACH(i, n) {
        const long long p = i % pixels;
        const long long o = (i / pixels) % out_channels;
        const long long b = i / (pixels * out_channels);
        real_t v = grad[i];
        if (relu) v *= (y[i] > (real_t)0) ? (real_t)1 : (real_t)0;
        dy[o * batch * pixels + b * pixels + p] = v;
    }
}
