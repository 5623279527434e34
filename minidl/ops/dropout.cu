#include "common.cuh"
// dropout.cu -- inverted dropout with a counter-based mask (see dropout.py for the derivation).
//
// The mask is a pure function of (seed, element index), so it needs no stored random state,
// is independent of the launch configuration, and matches the Numba kernel bit for bit: both
// use the same splitmix64 hash on unsigned 64-bit integers (wrapping modulo 2^64) and compare
// integers, never floats.

// splitmix64 of counter i in stream `seed`.
__device__ __forceinline__ unsigned long long dropout_hash(unsigned long long seed,
                                                           unsigned long long i) {
    unsigned long long z = seed + (i + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// y[i] = x[i] * scale if (hash(seed, i) >> 11) >= threshold, else 0; scale = 1 / (1 - p) and
// threshold = ceil(p * 2^53). Forward runs it on the input, backward on the gradient (dropout
// is linear in x). One thread owns one element.
extern "C" __global__ void dropout_apply(long long n, const real_t* __restrict__ x,
                                         real_t* __restrict__ y, unsigned long long seed,
                                         unsigned long long threshold, real_t scale) {
    FOR_EACH(i, n) {
        const bool keep = (dropout_hash(seed, (unsigned long long)i) >> 11) >= threshold;
        y[i] = keep ? x[i] * scale : (real_t)0;
    }
}
