#include "common.cuh"
// optim.cu -- the SGD and Adam/AdamW updates on the GPU (see optim.py for the formulas; for
// Adam, PyTorch's order of operations, which fma() reproduces: a lerp, an addcmul and an add
// with alpha are each one fused multiply-add there).

// A product rounded on its own: NVRTC contracts a * b + c into one fused multiply-add by
// default (--fmad=true), which would round differently from the CPU's separate operations.
__device__ __forceinline__ float mul_rn(float a, float b) {
    return __fmul_rn(a, b);
}
__device__ __forceinline__ double mul_rn(double a, double b) {
    return __dmul_rn(a, b);
}

// SGD with the learning rate inside the velocity, for element i:
//   v = momentum * v[i];  v = v - decay * w[i] (if with_decay);  v = v - lr * g[i];
//   v[i] = v;  w[i] = w[i] + v
// in that order, each operation rounded to real_t: the Numba loop's operations (optim.py),
// so the two give the same bits. One thread owns one element of the parameter and of its
// velocity: one pass over memory instead of CuPy's six kernels and two temporaries.
extern "C" __global__ void sgd_update(
        long long n, real_t* __restrict__ w, real_t* __restrict__ v, const real_t* __restrict__ g,
        real_t momentum, real_t decay, real_t lr, int with_decay) {
    FOR_EACH(i, n) {
        real_t vi = mul_rn(v[i], momentum);
        if (with_decay) {
            vi = vi - mul_rn(decay, w[i]);
        }
        vi = vi - mul_rn(lr, g[i]);
        v[i] = vi;
        w[i] = w[i] + vi;
    }
}

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
