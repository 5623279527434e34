#include "common.cuh"
// loss.cu -- cross-entropy (class indices or probabilities) and binary cross-entropy with
// logits (see loss.py for the formulas and what the options mean).
//
// Stability: every exp sees an argument <= 0 (the row max is subtracted first, or -|x| is
// used), so nothing overflows even for logits of 1e4 or more. A running max starts from the
// first element, not from -INFINITY (NVRTC does not define INFINITY).
//
// The incoming gradient is read through a pointer -- one scale per row (cross-entropy) or one
// element, or one per element (BCE) -- so the host never has to copy it back from the GPU
// before launching backward.

// m = max_j row[j] and log(sum_j exp(row[j] - m)) of one row of k logits.
__device__ void row_statistics(const real_t* row, long long k, real_t* m_out, real_t* ls_out) {
    real_t m = row[0];
    for (long long j = 1; j < k; ++j) {
        m = row[j] > m ? row[j] : m;
    }
    real_t s = (real_t)0;
    for (long long j = 0; j < k; ++j) {
        s += exp(row[j] - m);
    }
    *m_out = m;
    *ls_out = log(s);
}

// NVRTC defines neither NAN nor INFINITY; sqrt(-1) is a NaN in every real_t.
__device__ __forceinline__ real_t not_a_number() {
    return sqrt((real_t)-1);
}

// Class-index targets, step 1 of 2: each row of k logits is split into `parts` interleaved
// parts, columns j = p, p + parts, p + 2 parts, ... For part p of row r (item i = r * parts + p):
//   part_max[i] = m_p = max_{j in p} x[r, j],   part_sum[i] = sum_{j in p} exp(x[r, j] - m_p),
//   part_smooth[i] = sum_{j in p} w[j] (m_p - x[r, j]),   part_weight[i] = sum_{j in p} w[j]
// (the last two only with label smoothing). One thread owns one part: with parts = 32, the 32
// threads of a warp read 32 neighbouring logits at each step, and a row is reduced by 32
// threads instead of one. A part with no column (k < parts) holds x[r, 0] and zero sums.
extern "C" __global__ void cross_entropy_row_parts(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ weight,
        real_t* __restrict__ part_max, real_t* __restrict__ part_sum,
        real_t* __restrict__ part_smooth, real_t* __restrict__ part_weight, long long k,
        int parts, real_t smoothing) {
    FOR_EACH(i, n) {
        const real_t* row = x + (i / parts) * k;
        const long long first = i % parts;
        real_t m = row[first < k ? first : 0];
        for (long long j = first + parts; j < k; j += parts) {
            m = row[j] > m ? row[j] : m;
        }
        real_t s = (real_t)0, smooth = (real_t)0, total = (real_t)0;
        for (long long j = first; j < k; j += parts) {
            s += exp(row[j] - m);
            if (smoothing != (real_t)0) {
                smooth += weight[j] * (m - row[j]);
                total += weight[j];
            }
        }
        part_max[i] = m;
        part_sum[i] = s;
        part_smooth[i] = smooth;
        part_weight[i] = total;
    }
}

// Class-index targets, step 2 of 2: the parts of row r combined, in part order,
//   m = max_p m_p,   log_sum = log(sum_p part_sum[p] exp(m_p - m)),
// and the row's loss with y = labels[r]:
//   row_loss[r] = (1 - eps) w[y] ((m - x[r, y]) + log_sum)
//                 + (eps / k) sum_p (part_smooth[p] + (m - m_p) part_weight[p] + log_sum part_weight[p])
// (the last line is (eps / k) sum_c w[c] ((m - x[r, c]) + log_sum)), and row_weight[r] = w[y],
// the row's share of the mean's denominator. Where y == ignore_index both are 0. A label
// outside [0, k) makes both NaN: labels that live on the GPU are not read back to be checked
// (that would make the host wait mid-step), so a wrong one shows as a NaN loss instead of an
// out-of-bounds read. One thread owns one row (n = rows) and reads its `parts` partials.
extern "C" __global__ void cross_entropy_forward(
        long long n, const real_t* __restrict__ x, const long long* __restrict__ labels,
        const real_t* __restrict__ weight, const real_t* __restrict__ part_max,
        const real_t* __restrict__ part_sum, const real_t* __restrict__ part_smooth,
        const real_t* __restrict__ part_weight, real_t* __restrict__ row_loss,
        real_t* __restrict__ row_weight, real_t* __restrict__ row_max,
        real_t* __restrict__ log_sum, long long k, int parts, long long ignore_index,
        real_t smoothing) {
    FOR_EACH(r, n) {
        const long long base = r * parts;
        real_t m = part_max[base];
        for (int p = 1; p < parts; ++p) {
            m = part_max[base + p] > m ? part_max[base + p] : m;
        }
        real_t s = (real_t)0;
        for (int p = 0; p < parts; ++p) {
            s += part_sum[base + p] * exp(part_max[base + p] - m);
        }
        const real_t ls = log(s);
        row_max[r] = m;
        log_sum[r] = ls;
        const long long y = labels[r];
        if (y == ignore_index) {
            row_loss[r] = (real_t)0;
            row_weight[r] = (real_t)0;
            continue;
        }
        if (y < 0 || y >= k) {
            row_loss[r] = not_a_number();
            row_weight[r] = not_a_number();
            continue;
        }
        real_t loss = ((real_t)1 - smoothing) * weight[y] * ((m - x[r * k + y]) + ls);
        if (smoothing != (real_t)0) {
            real_t smooth = (real_t)0;
            for (int p = 0; p < parts; ++p) {
                const real_t w = part_weight[base + p];
                smooth += part_smooth[base + p] + (m - part_max[base + p]) * w + ls * w;
            }
            loss += smoothing / (real_t)k * smooth;
        }
        row_loss[r] = loss;
        row_weight[r] = weight[y];
    }
}

// grad[r, j] = (S p_j - (eps / k) w[j] - [j == y] (1 - eps) w[y]) * row_scale[r], with
// p = exp((x - m) - log_sum) recomputed from the saved row statistics and
// S = (1 - eps) w[y] + (eps / k) sum_c w[c] (weight_sum[0]); 0 for an ignored row, NaN for a
// label outside [0, k) (see cross_entropy_forward). One thread owns one element
// (n = rows * k), since elements are independent once the row statistics are known.
extern "C" __global__ void cross_entropy_backward(
        long long n, const real_t* __restrict__ x, const long long* __restrict__ labels,
        const real_t* __restrict__ weight, const real_t* __restrict__ row_max,
        const real_t* __restrict__ log_sum, const real_t* __restrict__ row_scale,
        const real_t* __restrict__ weight_sum, real_t* __restrict__ grad, long long k,
        long long ignore_index, real_t smoothing) {
    FOR_EACH(i, n) {
        const long long r = i / k;
        const long long j = i - r * k;
        const long long y = labels[r];
        if (y == ignore_index) {
            grad[i] = (real_t)0;
            continue;
        }
        if (y < 0 || y >= k) {
            grad[i] = not_a_number();
            continue;
        }
        const real_t p = exp((x[i] - row_max[r]) - log_sum[r]);
        const real_t picked = ((real_t)1 - smoothing) * weight[y];
        real_t value = p * picked;
        if (smoothing != (real_t)0) {
            value = p * (picked + smoothing / (real_t)k * weight_sum[0]);
            value -= smoothing / (real_t)k * weight[j];
        }
        if (j == y) {
            value -= picked;
        }
        grad[i] = value * row_scale[r];
    }
}

// Class-probability targets t (rows x k): q_c = w[c] (t[r, c] (1 - eps) + eps / k),
//   row_loss[r] = sum_c q_c ((m - x[r, c]) + log_sum),  q_sum[r] = sum_c q_c.
// One thread owns one row.
extern "C" __global__ void cross_entropy_probs_forward(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ t,
        const real_t* __restrict__ weight, real_t* __restrict__ row_loss,
        real_t* __restrict__ row_max, real_t* __restrict__ log_sum, real_t* __restrict__ q_sum,
        long long k, real_t smoothing) {
    FOR_EACH(r, n) {
        const real_t* row = x + r * k;
        real_t m, ls;
        row_statistics(row, k, &m, &ls);
        real_t loss = (real_t)0, total = (real_t)0;
        for (long long c = 0; c < k; ++c) {
            const real_t q = (t[r * k + c] * ((real_t)1 - smoothing) + smoothing / (real_t)k) * weight[c];
            loss += q * ((m - row[c]) + ls);
            total += q;
        }
        row_max[r] = m;
        log_sum[r] = ls;
        row_loss[r] = loss;
        q_sum[r] = total;
    }
}

// grad[r, j] = (q_sum[r] p_j - q_j) * row_scale[r], q_j as in the forward kernel. One thread
// owns one element.
extern "C" __global__ void cross_entropy_probs_backward(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ t,
        const real_t* __restrict__ weight, const real_t* __restrict__ row_max,
        const real_t* __restrict__ log_sum, const real_t* __restrict__ q_sum,
        const real_t* __restrict__ row_scale, real_t* __restrict__ grad, long long k,
        real_t smoothing) {
    FOR_EACH(i, n) {
        const long long r = i / k;
        const long long j = i - r * k;
        const real_t p = exp((x[i] - row_max[r]) - log_sum[r]);
        const real_t q = (t[i] * ((real_t)1 - smoothing) + smoothing / (real_t)k) * weight[j];
        grad[i] = (p * q_sum[r] - q) * row_scale[r];
    }
}

// Elementwise binary cross-entropy of sigmoid(x) against t, in the form that cannot overflow:
//   loss[i] = log1p(exp(-|x|)) - x t + max(x, 0)                              (no pos_weight)
//   loss[i] = (log1p(exp(-|x|)) + max(-x, 0)) (1 + (pw - 1) t) + (1 - t) x    (pos_weight pw)
// times weight[i] if has_weight. weight and pos_weight come broadcast to x's shape. One thread
// owns one element; the reduction is done in Python.
extern "C" __global__ void bce_with_logits_forward(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ t,
        const real_t* __restrict__ weight, const real_t* __restrict__ pos_weight,
        real_t* __restrict__ loss, int has_weight, int has_pos_weight) {
    FOR_EACH(i, n) {
        const real_t v = x[i];
        real_t value = log1p(exp(-fabs(v)));
        if (has_pos_weight) {
            value += -v > (real_t)0 ? -v : (real_t)0;
            value *= (pos_weight[i] - (real_t)1) * t[i] + (real_t)1;
            value += ((real_t)1 - t[i]) * v;
        } else {
            value -= v * t[i];
            value += v > (real_t)0 ? v : (real_t)0;
        }
        loss[i] = has_weight ? value * weight[i] : value;
    }
}

// grad[i] = (sigmoid(x) - t) or (sigmoid(x) (1 + (pw - 1) t) - pw t), times weight[i], times
// the incoming gradient: scale[i] if per_element (reduction "none"), else scale[0] (already
// divided by n for the mean). sigmoid as 1 / (1 + exp(-x)), whose overflow to 1 / inf = 0 for
// x << 0 is the right limit. One thread owns one element.
extern "C" __global__ void bce_with_logits_backward(
        long long n, const real_t* __restrict__ x, const real_t* __restrict__ t,
        const real_t* __restrict__ weight, const real_t* __restrict__ pos_weight,
        const real_t* __restrict__ scale, real_t* __restrict__ grad, int has_weight,
        int has_pos_weight, int per_element) {
    FOR_EACH(i, n) {
        real_t value = (real_t)1 / ((real_t)1 + exp(-x[i]));
        if (has_pos_weight) {
            value *= (pos_weight[i] - (real_t)1) * t[i] + (real_t)1;
            value -= pos_weight[i] * t[i];
        } else {
            value -= t[i];
        }
        if (has_weight) {
            value *= weight[i];
        }
        grad[i] = value * scale[per_element ? i : 0];
    }
}
