#include "common.cuh"
// optim.cu -- the Adam/AdamW update on the GPU (see optim.py for the formula and PyTorch's
// order of operations, which fma() reproduces: a lerp, an addcmul and an add with alpha are
// each one fused multiply-add there).

// For element i: w *= decay_factor (AdamW); g += weight_decay * w (Adam);
// m = lerp(m, g, 1 - beta1) (lerp_complement = 1 - (1 - beta1) for its second form); v = v * beta2 + (1 - beta2) * g * g; v_hat = max(v_max, v) with
// amsgrad; w += neg_step_size * m / (sqrt(v_hat) / bias_correction2_sqrt + eps).
// One thread owns one element of the parameter and of its state.
extern "C" __global__ void adam_update(
        long long n, real_t* __restrict__ w, const real_t* __restrict__ g, real_t* __restrict__ m,
        real_t* __restrict__ v, real_t* __restrict__ v_max, real_t decay_factor,
        real_t weight_decay, real_t one_minus_beta1, real_t lerp_complement, real_t beta2,
        real_t one_minus_beta2, real_t neg_step_size, real_t bias_correction2_sqrt, real_t eps,
        int amsgrad) {
    FOR_EACH(i, n) {
        real_t gi = g[i];
        if (decay_factor != (real_t)1) {
            w[i] = w[i] * decay_factor;
        }
        if (weight_decay != (real_t)0) {
            gi = fma(weight_decay, w[i], gi);
        }
        if (one_minus_beta1 < (real_t)0.5) {
            m[i] = fma(one_minus_beta1, gi - m[i], m[i]);
        } else {
            m[i] = fma(-(gi - m[i]), lerp_complement, gi);
        }
        real_t vi = v[i] * beta2;
        vi = fma(one_minus_beta2 * gi, gi, vi);
        v[i] = vi;
        if (amsgrad) {
            if (vi > v_max[i]) {
                v_max[i] = vi;
            }
            vi = v_max[i];
        }
        const real_t denominator = sqrt(vi) / bias_correction2_sqrt + eps;
        w[i] = w[i] + neg_step_size * m[i] / denominator;
    }
}
