#include "common.cuh"
// winograd.cu -- the four tile transforms of a stride-1 convolution by Winograd's F(4x4, 3x3)
// or F(2x2, 5x5) (see winograd.py for the algebra). Both read 6x6 input tiles; m, the side of
// a tile's block of outputs, is 4 or 2. The multiply-adds between the transforms are 36 matrix
// products per group done by cuBLAS.
//
// Layouts, for one chunk of B images of C input and O output channels, tiled into
// tiles_h x tiles_w tiles of m x m outputs (T = tiles_h * tiles_w per image):
//
//   x   (B, C, H, W)       input            y  (B, O, OH, OW)   output
//   v   (36, C, B*T)       v[(i, j), c, (b, th, tw)] = (B^T d B)[i, j],  d the 6x6 input tile
//                          at rows m*th - pad_h .. +5, columns m*tw - pad_w .. +5 (0 outside x)
//   m   (36, O, B*T)       the products; y's m x m block at (m*th, m*tw) is A^T m A
//
// B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1];
// A^T (m = 4) = [1 1 1 1 1 0; 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1];
// A^T (m = 2) = [1 1 1 1 1 0; 0 1 -1 2 -2 1].
// Backward runs the two adjoints: dm = A dY A^T and dx = sum over tiles of B dv B^T.

// out = B^T a for one column a of six.
__device__ __forceinline__ void bt_combine(const real_t* a, real_t* out) {
    out[0] = (real_t)4 * a[0] - (real_t)5 * a[2] + a[4];
    out[1] = a[3] + a[4] - (real_t)4 * (a[1] + a[2]);
    out[2] = (real_t)4 * (a[1] - a[2]) + a[4] - a[3];
    out[3] = (real_t)2 * (a[3] - a[1]) + a[4] - a[2];
    out[4] = (real_t)2 * (a[1] - a[3]) + a[4] - a[2];
    out[5] = (real_t)4 * a[1] - (real_t)5 * a[3] + a[5];
}

// out = A^T e for one column e of six: M outputs. M (4 or 2) is a template argument, so the
// per-tile arrays of the kernels below have fixed sizes and live in registers.
template <int M>
__device__ __forceinline__ void at_combine(const real_t* e, real_t* out) {
    const real_t plus = e[1] + e[2], minus = e[1] - e[2];
    out[0] = e[0] + plus + (e[3] + e[4]);
    if (M == 4) {
        out[1] = minus + (real_t)2 * (e[3] - e[4]);
        out[2] = plus + (real_t)4 * (e[3] + e[4]);
        out[3] = minus + (real_t)8 * (e[3] - e[4]) + e[5];
    } else {
        out[1] = minus + (real_t)2 * (e[3] - e[4]) + e[5];
    }
}

// out = A g for the M values of g: six outputs.
template <int M>
__device__ __forceinline__ void a_combine(const real_t* g, real_t* out) {
    if (M == 4) {
        out[0] = g[0];
        out[1] = g[0] + g[1] + g[2] + g[3];
        out[2] = g[0] - g[1] + g[2] - g[3];
        out[3] = g[0] + (real_t)2 * g[1] + (real_t)4 * g[2] + (real_t)8 * g[3];
        out[4] = g[0] - (real_t)2 * g[1] + (real_t)4 * g[2] - (real_t)8 * g[3];
        out[5] = g[3];
    } else {
        out[0] = g[0];
        out[1] = g[0] + g[1];
        out[2] = g[0] - g[1];
        out[3] = g[0] + (real_t)2 * g[1];
        out[4] = g[0] - (real_t)2 * g[1];
        out[5] = g[1];
    }
}

// B^T as a table in constant memory (the adjoint indexes it by a pixel's place in a tile, known
// only at run time; a table in the function would be rebuilt in local memory at every call).
__constant__ signed char WINOGRAD_BT[6][6] = {
    {4, 0, -5, 0, 1, 0}, {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
    {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};

// B[k][i] = B^T[i][k]: the weight of transformed entry i in tile position k (for the adjoint).
__device__ __forceinline__ real_t b_entry(int k, int i) {
    return (real_t)WINOGRAD_BT[i][k];
}

// Where item i of a per-tile kernel lies: the tile (channel, image, th, tw) in the layout
// (channel, image, th, tw) of v and m, and the top-left pixel of its m x m outputs.
struct Tile {
    long long channel, image;
    int top, left;
};

__device__ __forceinline__ Tile locate_tile(long long i, long long batch, int m, int tiles_h,
                                            int tiles_w) {
    const long long tiles = (long long)tiles_h * tiles_w;
    const long long column = i % (batch * tiles);
    const int tile = (int)(column % tiles);
    Tile t = {i / (batch * tiles), column / tiles, (tile / tiles_w) * m, (tile % tiles_w) * m};
    return t;
}

// v[(p, q), c, (b, th, tw)] = (B^T d B)[p, q] for the 6x6 input tile d at rows m*th - pad_h ..
// +5 and columns m*tw - pad_w .. +5 (0 in the padding). One thread owns one tile (c, b, th, tw):
// it reads the tile's 36 inputs and writes its 36 entries. n = C * B * T tiles, which is also
// the stride between the 36 planes (p, q) of v. Consecutive threads take consecutive tiles of
// one row, so each of the 36 writes is coalesced.
extern "C" __global__ void winograd_input_transform(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ v, long long batch,
        int channels, int height, int width, int pad_h, int pad_w, int m, int tiles_h,
        int tiles_w) {
    FOR_EACH(i, n) {
        const Tile t = locate_tile(i, batch, m, tiles_h, tiles_w);
        const int top = t.top - pad_h, left = t.left - pad_w;
        const real_t* plane = x + (t.image * channels + t.channel) * height * width;
        real_t d[6][6];
        for (int k = 0; k < 6; ++k) {
            for (int l = 0; l < 6; ++l) {
                const int h = top + k, w = left + l;
                d[l][k] = (h >= 0 && h < height && w >= 0 && w < width) ? plane[h * width + w]
                                                                        : (real_t)0;
            }
        }
        real_t bd[6][6];  // bd[l] = B^T d[:, l]: each column of the tile (d is stored by column)
        for (int l = 0; l < 6; ++l) {
            bt_combine(d[l], bd[l]);
        }
        for (int p = 0; p < 6; ++p) {  // v = (B^T d) B: row p, combined by B^T
            const real_t row[6] = {bd[0][p], bd[1][p], bd[2][p], bd[3][p], bd[4][p], bd[5][p]};
            real_t out[6];
            bt_combine(row, out);
            for (int q = 0; q < 6; ++q) {
                v[(6 * p + q) * n + i] = out[q];
            }
        }
    }
}

// y's m x m block at (m*th, m*tw) = A^T e A + bias[o], then max(., 0) if relu, with
// e[p, q] = mm[(p, q), o, (b, th, tw)]; the parts of the block past OH or OW are not written.
// One thread owns one output tile (o, b, th, tw); n = O * B * T tiles, the stride between the
// 36 planes of mm.
template <int M>
__device__ __forceinline__ void output_tile(long long i, long long n, const real_t* __restrict__ mm,
                                            const real_t* __restrict__ bias, real_t* __restrict__ y,
                                            long long batch, int out_channels, int out_h, int out_w,
                                            int tiles_h, int tiles_w, int has_bias, int relu) {
    const Tile t = locate_tile(i, batch, M, tiles_h, tiles_w);
    real_t s[6][M];  // s[q] = A^T e[:, q]: column q of the tile, combined
    for (int q = 0; q < 6; ++q) {
        real_t column[6];
        for (int p = 0; p < 6; ++p) {
            column[p] = mm[(6 * p + q) * n + i];
        }
        at_combine<M>(column, s[q]);
    }
    real_t* plane = y + (t.image * out_channels + t.channel) * out_h * out_w;
    for (int a = 0; a < M; ++a) {
        const real_t row[6] = {s[0][a], s[1][a], s[2][a], s[3][a], s[4][a], s[5][a]};
        real_t out[M];
        at_combine<M>(row, out);
        for (int c = 0; c < M; ++c) {
            const int h = t.top + a, w = t.left + c;
            if (h >= out_h || w >= out_w) continue;
            real_t value = out[c] + (has_bias ? bias[t.channel] : (real_t)0);
            if (relu && value < (real_t)0) value = (real_t)0;
            plane[h * out_w + w] = value;
        }
    }
}

extern "C" __global__ void winograd_output_transform(
        long long n, const real_t* __restrict__ mm, const real_t* __restrict__ bias,
        real_t* __restrict__ y, long long batch, int out_channels, int out_h, int out_w, int m,
        int tiles_h, int tiles_w, int has_bias, int relu) {
    FOR_EACH(i, n) {
        if (m == 4) {
            output_tile<4>(i, n, mm, bias, y, batch, out_channels, out_h, out_w, tiles_h, tiles_w,
                           has_bias, relu);
        } else {
            output_tile<2>(i, n, mm, bias, y, batch, out_channels, out_h, out_w, tiles_h, tiles_w,
                           has_bias, relu);
        }
    }
}

// The adjoint of the output transform: dm[(p, q), o, (b, th, tw)] = (A g A^T)[p, q] for the
// tile's m x m gradient block g (0 past OH or OW; times y > 0 if the ReLU was fused). One
// thread owns one output tile (o, b, th, tw); n = O * B * T.
template <int M>
__device__ __forceinline__ void output_adjoint_tile(long long i, long long n,
                                                    const real_t* __restrict__ grad,
                                                    const real_t* __restrict__ y,
                                                    real_t* __restrict__ dm, long long batch,
                                                    int out_channels, int out_h, int out_w,
                                                    int tiles_h, int tiles_w, int relu) {
    const Tile t = locate_tile(i, batch, M, tiles_h, tiles_w);
    const long long plane = (t.image * out_channels + t.channel) * out_h * out_w;
    real_t r[M][6];  // r[c] = A g[:, c]: column c of the block, combined
    for (int c = 0; c < M; ++c) {
        real_t column[M];
        for (int a = 0; a < M; ++a) {
            const int h = t.top + a, w = t.left + c;
            real_t value = (real_t)0;
            if (h < out_h && w < out_w) {
                value = grad[plane + h * out_w + w];
                if (relu) value *= (y[plane + h * out_w + w] > (real_t)0) ? (real_t)1 : (real_t)0;
            }
            column[a] = value;
        }
        a_combine<M>(column, r[c]);
    }
    for (int p = 0; p < 6; ++p) {  // dm row p = A (row p of r)
        real_t row[M];
        for (int c = 0; c < M; ++c) {
            row[c] = r[c][p];
        }
        real_t out[6];
        a_combine<M>(row, out);
        for (int q = 0; q < 6; ++q) {
            dm[(6 * p + q) * n + i] = out[q];
        }
    }
}

extern "C" __global__ void winograd_output_adjoint(
        long long n, const real_t* __restrict__ grad, const real_t* __restrict__ y,
        real_t* __restrict__ dm, long long batch, int out_channels, int out_h, int out_w, int m,
        int tiles_h, int tiles_w, int relu) {
    FOR_EACH(i, n) {
        if (m == 4) {
            output_adjoint_tile<4>(i, n, grad, y, dm, batch, out_channels, out_h, out_w, tiles_h,
                                   tiles_w, relu);
        } else {
            output_adjoint_tile<2>(i, n, grad, y, dm, batch, out_channels, out_h, out_w, tiles_h,
                                   tiles_w, relu);
        }
    }
}

// The adjoint of the input transform, as a gather: dx[b, c, h, w] sums, over the tiles whose
// 6x6 window holds (h, w), at position (k, l) in the window, the entry
// (B e B^T)[k][l] = sum over p, q of B[k][p] e[p][q] B[l][q], e[p][q] = dv[(p, q), c, tile].
// One thread owns one input element (n = B * C * H * W): no two threads write one element
// (no atomics), and the tiles are visited in a fixed order.
extern "C" __global__ void winograd_input_adjoint(
        long long n, const real_t* __restrict__ dv, real_t* __restrict__ dx, long long batch,
        int channels, int height, int width, int pad_h, int pad_w, int m, int tiles_h,
        int tiles_w) {
    const long long tiles = (long long)tiles_h * tiles_w;
    const long long n_columns = batch * tiles;
    const long long plane_stride = (long long)channels * n_columns;
    FOR_EACH(i, n) {
        const int w = (int)(i % width);
        const int h = (int)((i / width) % height);
        const long long bc = i / ((long long)width * height);
        const long long c = bc % channels;
        const long long b = bc / channels;
        const int ph = h + pad_h, pw = w + pad_w;  // position in the padded input
        real_t total_grad = (real_t)0;
        // Tiles th with m*th <= ph <= m*th + 5.
        const int th_lo = ph >= 6 ? (ph - 6) / m + 1 : 0;
        const int tw_lo = pw >= 6 ? (pw - 6) / m + 1 : 0;
        for (int th = th_lo; th <= ph / m && th < tiles_h; ++th) {
            const int k = ph - m * th;
            for (int tw = tw_lo; tw <= pw / m && tw < tiles_w; ++tw) {
                const int l = pw - m * tw;
                const long long column = c * n_columns + b * tiles + (long long)th * tiles_w + tw;
                for (int p = 0; p < 6; ++p) {
                    const real_t bkp = b_entry(k, p);
                    if (bkp == (real_t)0) continue;
                    for (int q = 0; q < 6; ++q) {
                        total_grad += bkp * dv[(6 * p + q) * plane_stride + column] * b_entry(l, q);
                    }
                }
            }
        }
        dx[i] = total_grad;
    }
}
