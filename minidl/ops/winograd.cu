// winograd.cu -- the four tile transforms of a 3x3, stride-1 convolution by Winograd's
// F(2x2, 3x3) (see winograd.py for the algebra). The multiply-adds between them are 16 matrix
// products per group done by cuBLAS (cupy.matmul).
//
// Layouts, for one chunk of B images of C input and O output channels, tiled into
// tiles_h x tiles_w tiles of 2x2 outputs (T = tiles_h * tiles_w per image):
//
//   x   (B, C, H, W)       input            y  (B, O, OH, OW)   output
//   v   (16, C, B*T)       v[(i, j), c, (b, th, tw)] = (B^T d B)[i, j],  d the 4x4 input tile
//                          at rows 2*th - pad_h .. +3, columns 2*tw - pad_w .. +3 (0 outside x)
//   m   (16, O, B*T)       the products; y's 2x2 tile at (2*th, 2*tw) is A^T m A
//
// with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] and A^T = [1 1 1 0; 0 1 -1 -1].
// Backward runs the two adjoints: dm = A dY A^T and dx = sum over tiles of B dv B^T.
//
// Compiled twice, with real_t = float and real_t = double (see minidl/cuda.py).

// (B^T a) for one column a of four: the rows of B^T applied to it.
__device__ __forceinline__ void bt_combine(real_t a0, real_t a1, real_t a2, real_t a3,
                                           real_t* out0, real_t* out1, real_t* out2,
                                           real_t* out3) {
    *out0 = a0 - a2;
    *out1 = a1 + a2;
    *out2 = a2 - a1;
    *out3 = a1 - a3;
}

// B[k][i] = B^T[i][k]: the weight of transformed entry i in tile position k (for the adjoint).
__device__ __forceinline__ real_t b_entry(int k, int i) {
    const signed char bt[4][4] = {{1, 0, -1, 0}, {0, 1, 1, 0}, {0, -1, 1, 0}, {0, 1, 0, -1}};
    return (real_t)bt[i][k];
}

// Where thread `index` of a per-tile kernel works: the tile (channel, image, th, tw) in the
// layout (channel, image, th, tw) of v and m, and the top-left pixel of its 2x2 outputs.
struct Tile {
    long long channel, image;
    int top, left;
};

__device__ __forceinline__ Tile locate_tile(long long index, long long batch, int tiles_h,
                                            int tiles_w) {
    const long long tiles = (long long)tiles_h * tiles_w;
    const long long column = index % (batch * tiles);
    const int tile = (int)(column % tiles);
    Tile t = {index / (batch * tiles), column / tiles, (tile / tiles_w) * 2, (tile % tiles_w) * 2};
    return t;
}

// One thread per tile (c, b, th, tw): it reads the 16 inputs of its tile (0 in the padding)
// and writes the tile's 16 transformed entries. Consecutive threads take consecutive tiles of
// one row, so each of the 16 writes is coalesced.
extern "C" __global__ void winograd_input_transform(
        const real_t* __restrict__ x, real_t* __restrict__ v, long long batch, int channels,
        int height, int width, int pad_h, int pad_w, int tiles_h, int tiles_w) {
    // One thread per tile; also the stride between the 16 planes (i, j) of v or m.
    const long long plane_stride = channels * batch * tiles_h * tiles_w;
    const long long total = plane_stride;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const Tile t = locate_tile(index, batch, tiles_h, tiles_w);
        const int top = t.top - pad_h, left = t.left - pad_w;
        const real_t* plane = x + (t.image * channels + t.channel) * height * width;
        real_t d[4][4];
        for (int k = 0; k < 4; ++k) {
            for (int l = 0; l < 4; ++l) {
                const int h = top + k, w = left + l;
                d[k][l] = (h >= 0 && h < height && w >= 0 && w < width) ? plane[h * width + w]
                                                                        : (real_t)0;
            }
        }
        real_t bd[4][4];  // B^T d, a column at a time
        for (int l = 0; l < 4; ++l) {
            bt_combine(d[0][l], d[1][l], d[2][l], d[3][l], &bd[0][l], &bd[1][l], &bd[2][l], &bd[3][l]);
        }
        for (int i = 0; i < 4; ++i) {  // v = (B^T d) B: row i, combined by B^T
            real_t out[4];
            bt_combine(bd[i][0], bd[i][1], bd[i][2], bd[i][3], &out[0], &out[1], &out[2], &out[3]);
            for (int j = 0; j < 4; ++j) {
                v[(4 * i + j) * plane_stride + index] = out[j];
            }
        }
    }
}

// One thread per output tile (o, b, th, tw): y's 2x2 tile = A^T m A, plus bias[o], then
// max(., 0) if relu; the parts of the tile past OH or OW are not written.
extern "C" __global__ void winograd_output_transform(
        const real_t* __restrict__ m, const real_t* __restrict__ bias, real_t* __restrict__ y,
        long long batch, int out_channels, int out_h, int out_w, int tiles_h, int tiles_w,
        int has_bias, int relu) {
    // One thread per tile; also the stride between the 16 planes (i, j) of v or m.
    const long long plane_stride = out_channels * batch * tiles_h * tiles_w;
    const long long total = plane_stride;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const Tile t = locate_tile(index, batch, tiles_h, tiles_w);
        const long long o = t.channel, b = t.image;
        const int top = t.top, left = t.left;
        real_t e[4][4];
        for (int f = 0; f < 16; ++f) {
            e[f / 4][f % 4] = m[f * plane_stride + index];
        }
        real_t s[2][4];  // s = A^T e
        for (int j = 0; j < 4; ++j) {
            s[0][j] = e[0][j] + e[1][j] + e[2][j];
            s[1][j] = e[1][j] - e[2][j] - e[3][j];
        }
        real_t* plane = y + (b * out_channels + o) * out_h * out_w;
        for (int a = 0; a < 2; ++a) {
            const real_t pair[2] = {s[a][0] + s[a][1] + s[a][2], s[a][1] - s[a][2] - s[a][3]};
            for (int q = 0; q < 2; ++q) {
                const int h = top + a, w = left + q;
                if (h >= out_h || w >= out_w) continue;
                real_t value = pair[q] + (has_bias ? bias[o] : (real_t)0);
                if (relu && value < (real_t)0) value = (real_t)0;
                plane[h * out_w + w] = value;
            }
        }
    }
}

// The adjoint of the output transform, one thread per output tile (o, b, th, tw):
// dm = A g A^T for the tile's 2x2 gradient g (0 past OH or OW; times y > 0 if the ReLU was
// fused), A = [1 0; 1 1; 1 -1; 0 -1].
extern "C" __global__ void winograd_output_adjoint(
        const real_t* __restrict__ grad, const real_t* __restrict__ y, real_t* __restrict__ dm,
        long long batch, int out_channels, int out_h, int out_w, int tiles_h, int tiles_w,
        int relu) {
    // One thread per tile; also the stride between the 16 planes (i, j) of v or m.
    const long long plane_stride = out_channels * batch * tiles_h * tiles_w;
    const long long total = plane_stride;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const Tile t = locate_tile(index, batch, tiles_h, tiles_w);
        const long long o = t.channel, b = t.image;
        const int top = t.top, left = t.left;
        const long long plane = (b * out_channels + o) * out_h * out_w;
        real_t g[2][2];
        for (int a = 0; a < 2; ++a) {
            for (int q = 0; q < 2; ++q) {
                const int h = top + a, w = left + q;
                real_t value = (real_t)0;
                if (h < out_h && w < out_w) {
                    value = grad[plane + h * out_w + w];
                    if (relu) value *= (y[plane + h * out_w + w] > (real_t)0) ? (real_t)1 : (real_t)0;
                }
                g[a][q] = value;
            }
        }
        real_t r[4][2] = {{g[0][0], g[0][1]},  // r = A g
                          {g[0][0] + g[1][0], g[0][1] + g[1][1]},
                          {g[0][0] - g[1][0], g[0][1] - g[1][1]},
                          {-g[1][0], -g[1][1]}};
        for (int i = 0; i < 4; ++i) {  // dm row i = A r[i]
            const real_t row[4] = {r[i][0], r[i][0] + r[i][1], r[i][0] - r[i][1], -r[i][1]};
            for (int j = 0; j < 4; ++j) {
                dm[(4 * i + j) * plane_stride + index] = row[j];
            }
        }
    }
}

// The adjoint of the input transform, as a gather: one thread per input element
// dx[b, c, h, w] sums, over the (at most 2x2) tiles whose 4x4 window holds it, at position
// (k, l) in the window, the entry (B dv B^T)[k][l] = sum over i, j of B[k][i] dv[i][j] B[l][j].
// No two threads write one element (no atomics), and the tiles are visited in a fixed order.
extern "C" __global__ void winograd_input_adjoint(
        const real_t* __restrict__ dv, real_t* __restrict__ dx, long long batch, int channels,
        int height, int width, int pad_h, int pad_w, int tiles_h, int tiles_w) {
    const long long tiles = (long long)tiles_h * tiles_w;
    const long long n_columns = batch * tiles;
    const long long plane_stride = (long long)channels * n_columns;
    const long long total = batch * channels * height * width;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)blockDim.x * gridDim.x) {
        const int w = (int)(index % width);
        const int h = (int)((index / width) % height);
        const long long bc = index / ((long long)width * height);
        const long long c = bc % channels;
        const long long b = bc / channels;
        const int ph = h + pad_h, pw = w + pad_w;  // position in the padded input
        real_t total_grad = (real_t)0;
        for (int th = ph / 2 - 1; th <= ph / 2; ++th) {
            if (th < 0 || th >= tiles_h) continue;
            const int k = ph - 2 * th;
            for (int tw = pw / 2 - 1; tw <= pw / 2; ++tw) {
                if (tw < 0 || tw >= tiles_w) continue;
                const int l = pw - 2 * tw;
                const long long column = c * n_columns + b * tiles + (long long)th * tiles_w + tw;
                for (int i = 0; i < 4; ++i) {
                    const real_t bki = b_entry(k, i);
                    if (bki == (real_t)0) continue;
                    for (int j = 0; j < 4; ++j) {
                        total_grad += bki * dv[(4 * i + j) * plane_stride + column] * b_entry(l, j);
                    }
                }
            }
        }
        dx[index] = total_grad;
    }
}
