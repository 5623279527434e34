#include "common.cuh"
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

// Where item i of a per-tile kernel lies: the tile (channel, image, th, tw) in the layout
// (channel, image, th, tw) of v and m, and the top-left pixel of its 2x2 outputs.
struct Tile {
    long long channel, image;
    int top, left;
};

__device__ __forceinline__ Tile locate_tile(long long i, long long batch, int tiles_h,
                                            int tiles_w) {
    const long long tiles = (long long)tiles_h * tiles_w;
    const long long column = i % (batch * tiles);
    const int tile = (int)(column % tiles);
    Tile t = {i / (batch * tiles), column / tiles, (tile / tiles_w) * 2, (tile % tiles_w) * 2};
    return t;
}

// v[(p, q), c, (b, th, tw)] = (B^T d B)[p, q] for the 4x4 input tile d at rows 2*th - pad_h ..
// +3 and columns 2*tw - pad_w .. +3 (0 in the padding). One thread owns one tile (c, b, th, tw):
// it reads the tile's 16 inputs and writes its 16 entries. n = C * B * T tiles, which is also
// the stride between the 16 planes (p, q) of v. Consecutive threads take consecutive tiles of
// one row, so each of the 16 writes is coalesced.
extern "C" __global__ void winograd_input_transform(
        long long n, const real_t* __restrict__ x, real_t* __restrict__ v, long long batch,
        int channels, int height, int width, int pad_h, int pad_w, int tiles_h, int tiles_w) {
    FOR_EACH(i, n) {
        const Tile t = locate_tile(i, batch, tiles_h, tiles_w);
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
        for (int p = 0; p < 4; ++p) {  // v = (B^T d) B: row p, combined by B^T
            real_t out[4];
            bt_combine(bd[p][0], bd[p][1], bd[p][2], bd[p][3], &out[0], &out[1], &out[2], &out[3]);
            for (int q = 0; q < 4; ++q) {
                v[(4 * p + q) * n + i] = out[q];
            }
        }
    }
}

// y's 2x2 tile at (2*th, 2*tw) = A^T e A + bias[o], then max(., 0) if relu, with
// e[p, q] = m[(p, q), o, (b, th, tw)]; the parts of the tile past OH or OW are not written.
// One thread owns one output tile (o, b, th, tw); n = O * B * T tiles, the stride between the
// 16 planes of m.
extern "C" __global__ void winograd_output_transform(
        long long n, const real_t* __restrict__ m, const real_t* __restrict__ bias,
        real_t* __restrict__ y, long long batch, int out_channels, int out_h, int out_w,
        int tiles_h, int tiles_w, int has_bias, int relu) {
    FOR_EACH(i, n) {
        const Tile t = locate_tile(i, batch, tiles_h, tiles_w);
        const long long o = t.channel, b = t.image;
        const int top = t.top, left = t.left;
        real_t e[4][4];
        for (int f = 0; f < 16; ++f) {
            e[f / 4][f % 4] = m[f * n + i];
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

// The adjoint of the output transform: dm[(p, q), o, (b, th, tw)] = (A g A^T)[p, q] for the
// tile's 2x2 gradient g (0 past OH or OW; times y > 0 if the ReLU was fused),
// A = [1 0; 1 1; 1 -1; 0 -1]. One thread owns one output tile (o, b, th, tw); n = O * B * T.
extern "C" __global__ void winograd_output_adjoint(
        long long n, const real_t* __restrict__ grad, const real_t* __restrict__ y,
        real_t* __restrict__ dm, long long batch, int out_channels, int out_h, int out_w,
        int tiles_h, int tiles_w, int relu) {
    FOR_EACH(i, n) {
        const Tile t = locate_tile(i, batch, tiles_h, tiles_w);
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
        for (int p = 0; p < 4; ++p) {  // dm row p = A r[p]
            const real_t row[4] = {r[p][0], r[p][0] + r[p][1], r[p][0] - r[p][1], -r[p][1]};
            for (int q = 0; q < 4; ++q) {
                dm[(4 * p + q) * n + i] = row[q];
            }
        }
    }
}

// The adjoint of the input transform, as a gather: dx[b, c, h, w] sums, over the (at most
// 2x2) tiles whose 4x4 window holds (h, w), at position (k, l) in the window, the entry
// (B e B^T)[k][l] = sum over p, q of B[k][p] e[p][q] B[l][q], e[p][q] = dv[(p, q), c, tile].
// One thread owns one input element (n = B * C * H * W): no two threads write one element
// (no atomics), and the tiles are visited in a fixed order.
extern "C" __global__ void winograd_input_adjoint(
        long long n, const real_t* __restrict__ dv, real_t* __restrict__ dx, long long batch,
        int channels, int height, int width, int pad_h, int pad_w, int tiles_h, int tiles_w) {
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
        for (int th = ph / 2 - 1; th <= ph / 2; ++th) {
            if (th < 0 || th >= tiles_h) continue;
            const int k = ph - 2 * th;
            for (int tw = pw / 2 - 1; tw <= pw / 2; ++tw) {
                if (tw < 0 || tw >= tiles_w) continue;
                const int l = pw - 2 * tw;
                const long long column = c * n_columns + b * tiles + (long long)th * tiles_w + tw;
                for (int p = 0; p < 4; ++p) {
                    const real_t bkp = b_entry(k, p);
                    if (bkp == (real_t)0) continue;
                    for (int q = 0; q < 4; ++q) {
                        total_grad += bkp * dv[(4 * p + q) * plane_stride + column] * b_entry(l, q);
                    }
                }
            }
        }
        dx[i] = total_grad;
    }
}
