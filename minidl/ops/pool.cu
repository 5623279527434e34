// Max pooling over (N, C, H, W) planes; see pool.py for the output-size rule.
// Compiled twice, with real_t = float and real_t = double. argmax holds the flat index
// h * W + w of each output's maximum inside its own input plane.

// y[p, i, j] = max of x[p] over rows i*sh-ph .. +kh and columns j*sw-pw .. +kw, clipped to the
// input (padding is -inf; every window holds a real element, so the max starts from the first
// one -- NVRTC has no INFINITY). One thread owns one output element. Rows-then-columns scan
// with a strict '>' keeps the first maximum; 'v != v' lets a NaN win, as in PyTorch.
extern "C" __global__ void max_pool2d_forward(
    long long total, const real_t* __restrict__ x, real_t* __restrict__ y,
    int* __restrict__ argmax, int height, int width, int out_h, int out_w,
    int kh, int kw, int sh, int sw, int ph, int pw)
{
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const int j = (int)(index % out_w);
        const int i = (int)((index / out_w) % out_h);
        const long long plane = index / ((long long)out_w * out_h);
        const real_t* xp = x + plane * height * width;
        const int h0 = i * sh - ph, w0 = j * sw - pw;
        const int h_lo = h0 > 0 ? h0 : 0, w_lo = w0 > 0 ? w0 : 0;
        const int h_hi = h0 + kh < height ? h0 + kh : height;
        const int w_hi = w0 + kw < width ? w0 + kw : width;
        int best_at = h_lo * width + w_lo;
        real_t best = xp[best_at];
        for (int h = h_lo; h < h_hi; ++h) {
            for (int w = w_lo; w < w_hi; ++w) {
                const real_t v = xp[h * width + w];
                if (v > best || v != v) {
                    best = v;
                    best_at = h * width + w;
                }
            }
        }
        y[index] = best;
        argmax[index] = best_at;
    }
}

// grad_x[p, h, w] = sum of grad_y[p, i, j] over the outputs (i, j) whose window covers (h, w)
// and whose argmax is (h, w). One thread owns one input element and gathers, so there are no
// atomics and the sum is formed in ascending output order -- as on the CPU, same bits.
// Windows covering row h: i*sh - ph <= h < i*sh - ph + kh, i.e. i from
// ceil((h + ph - kh + 1) / sh) to floor((h + ph) / sh); likewise for columns.
extern "C" __global__ void max_pool2d_backward(
    long long total, const real_t* __restrict__ grad_y, const int* __restrict__ argmax,
    real_t* __restrict__ grad_x, int height, int width, int out_h, int out_w,
    int kh, int kw, int sh, int sw, int ph, int pw)
{
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(index % width);
        const int h = (int)((index / width) % height);
        const long long plane = index / ((long long)width * height);
        const int i_lo = h + ph < kh ? 0 : (h + ph - kh) / sh + 1;
        const int j_lo = w + pw < kw ? 0 : (w + pw - kw) / sw + 1;
        const int i_hi = (h + ph) / sh + 1 < out_h ? (h + ph) / sh + 1 : out_h;
        const int j_hi = (w + pw) / sw + 1 < out_w ? (w + pw) / sw + 1 : out_w;
        const long long offset = plane * out_h * out_w;
        const int me = h * width + w;
        real_t sum = 0;
        for (int i = i_lo; i < i_hi; ++i) {
            for (int j = j_lo; j < j_hi; ++j) {
                if (argmax[offset + i * out_w + j] == me) {
                    sum += grad_y[offset + i * out_w + j];
                }
            }
        }
        grad_x[index] = sum;
    }
}
