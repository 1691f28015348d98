/* Dropout masks from Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy
 * as 1, 2, 3"), a counter-based generator: element i's uniform is a pure function of the
 * key (a 64-bit seed the caller draws from the run's generator) and i, so blocks of
 * elements are drawn in parallel and in vectors, where the CPU's torch.Generator
 * (mt19937) draws one number after another (timings: docs/performance.md).
 * l2lbench/fastpath/native/dropout.py computes the same numbers with PyTorch operations. */
#include <stdint.h>

/* The version of this file's interface, checked by the loader against the signature table
   in dropout.py (ABI_VERSIONS in build.py): bump both with any change of a signature. */
#define L2L_ABI_VERSION 1
int l2l_abi_version(void) { return L2L_ABI_VERSION; }

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u

/* Philox4x32-10 in place: x, the counter, becomes the 4 output words; (k0, k1) the key. */
static inline void philox(uint32_t x[4], uint32_t k0, uint32_t k1)
{
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)M0 * x[0], p1 = (uint64_t)M1 * x[2];
        uint32_t y0 = (uint32_t)(p1 >> 32) ^ x[1] ^ k0, y2 = (uint32_t)(p0 >> 32) ^ x[3] ^ k1;
        x[0] = y0; x[1] = (uint32_t)p1; x[2] = y2; x[3] = (uint32_t)p0;
        k0 += W0; k1 += W1;
    }
}

/* The raw words for counter (c0, c1, c2, c3) and key (k0, k1), for known-answer tests. */
void l2l_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4])
{
    for (int w = 0; w < 4; w++) out[w] = counter[w];
    philox(out, key[0], key[1]);
}

#define LANES 16 /* counters per pass: the rounds run lane by lane in SIMD registers */

#if defined(__AVX512F__)
#include <immintrin.h>
/* The ten rounds on 16 counters, 8 per register: vpmuludq multiplies the low 32 bits of
 * each 64-bit lane (GCC's vectoriser emits the much slower full 64-bit vpmullq instead). */
static inline void rounds(uint64_t x[4][LANES], uint64_t k0, uint64_t k1)
{
    const __m512i m0 = _mm512_set1_epi64(M0), m1 = _mm512_set1_epi64(M1), low = _mm512_set1_epi64(0xFFFFFFFFu);
    for (int half = 0; half < LANES; half += 8) {
        __m512i x0 = _mm512_loadu_si512(x[0] + half), x1 = _mm512_loadu_si512(x[1] + half);
        __m512i x2 = _mm512_loadu_si512(x[2] + half), x3 = _mm512_loadu_si512(x[3] + half);
        uint64_t a = k0, b = k1;
        for (int round = 0; round < 10; round++) {
            __m512i p0 = _mm512_mul_epu32(x0, m0), p1 = _mm512_mul_epu32(x2, m1);
            x0 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p1, 32), x1), _mm512_set1_epi64((long long)a));
            x1 = _mm512_and_si512(p1, low);
            x2 = _mm512_xor_si512(_mm512_xor_si512(_mm512_srli_epi64(p0, 32), x3), _mm512_set1_epi64((long long)b));
            x3 = _mm512_and_si512(p0, low);
            a = (a + W0) & 0xFFFFFFFFu; b = (b + W1) & 0xFFFFFFFFu;
        }
        _mm512_storeu_si512(x[0] + half, x0); _mm512_storeu_si512(x[1] + half, x1);
        _mm512_storeu_si512(x[2] + half, x2); _mm512_storeu_si512(x[3] + half, x3);
    }
}
#else
static inline void rounds(uint64_t x[4][LANES], uint64_t k0, uint64_t k1)
{
    for (int round = 0; round < 10; round++) {
#pragma omp simd
        for (int l = 0; l < LANES; l++) {
            uint64_t p0 = (x[0][l] & 0xFFFFFFFFu) * (uint64_t)M0, p1 = (x[2][l] & 0xFFFFFFFFu) * (uint64_t)M1;
            uint64_t y0 = (p1 >> 32) ^ x[1][l] ^ k0, y2 = (p0 >> 32) ^ x[3][l] ^ k1;
            x[0][l] = y0; x[1][l] = p1 & 0xFFFFFFFFu; x[2][l] = y2; x[3][l] = p0 & 0xFFFFFFFFu;
        }
        k0 = (k0 + W0) & 0xFFFFFFFFu; k1 = (k1 + W1) & 0xFFFFFFFFu;
    }
}
#endif

/* out[i] = m_i * x[i] (or m_i where x is NULL), m_i = scale if u_i >= rate else 0, with
 * u_i = (word >> 8) / 2^24 in steps of 2^-24, where element i = 64 c + 16 w + l takes word
 * w of counter j = 16 c + l (low and high 32 bits of j as the counter's first two words):
 * each of a pass's 4 words fills 16 consecutive elements, so the stores are vectors too.
 * Applying the mask here saves the input dropout a mask tensor and a pass over it; the
 * product is the one PyTorch forms (NaN * 0 stays NaN). */
static inline float masked(const float *x, int64_t i, uint64_t word, float rate, float scale)
{
    const float m = (float)(int32_t)(word >> 8) * (1.0f / 16777216.0f) >= rate ? scale : 0.0f;
    return x ? x[i] * m : m;
}

void l2l_dropout(int64_t n, uint64_t seed, float rate, float scale, const float *x, float *out, int threads)
{
    const int64_t chunks = (n + 4 * LANES - 1) / (4 * LANES);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t chunk = 0; chunk < chunks; chunk++) {
        /* 32-bit words in 64-bit lanes, as the vector 32 x 32 -> 64-bit multiply takes them */
        uint64_t words[4][LANES], k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
        for (int l = 0; l < LANES; l++) {
            uint64_t j = (uint64_t)(chunk * LANES + l);
            words[0][l] = j & 0xFFFFFFFFu; words[1][l] = j >> 32; words[2][l] = 0; words[3][l] = 0;
        }
        rounds(words, k0, k1);
        const int64_t first = chunk * 4 * LANES, left = n - first;
        for (int w = 0; w < 4; w++) {
            if (left >= 4 * LANES) {
#pragma omp simd
                for (int l = 0; l < LANES; l++)
                    out[first + w * LANES + l] = masked(x, first + w * LANES + l, words[w][l], rate, scale);
            } else {
                for (int l = 0; l < LANES && w * LANES + l < left; l++)
                    out[first + w * LANES + l] = masked(x, first + w * LANES + l, words[w][l], rate, scale);
            }
        }
    }
}
