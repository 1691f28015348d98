/* One meta-test step of a coordinatewise LSTM optimiser (the LSTM optimiser of Andrychowicz
 * et al. 2016 and MTL2L's LSTM, whose per-step synapses are composed before the call), fused:
 * per block of coordinates, the gradient's two features, every layer's four gates, its cell
 * and hidden state, and the learner's new parameters, with nothing but the states written
 * to memory. The PyTorch forms (l2lbench/optimizers/lstm.py) write the 80 x |theta| gate
 * matrix and pass over it a dozen times; here the gates live in registers.
 *
 * Layouts are those of the Python side: states (units, coordinates) row-major, a layer's
 * weight (4 units, inputs + units) with gates in nn.LSTMCell's order (i, f, a, o), its
 * bias (4 units). Coordinates are independent, so blocks run in parallel in any order and
 * the result does not depend on the thread count.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef L2L_MVEC
/* glibc's libmvec vector variants; its headers declare them only under -ffast-math,
 * which would also let the compiler assume there are no NaNs. */
#pragma omp declare simd notinbranch
float expf(float);
#pragma omp declare simd notinbranch
float tanhf(float);
#pragma omp declare simd notinbranch
float logf(float);
#endif

#if defined(__AVX512F__)
#define LANES 16
#define VECS 4 /* 4 gates x 4 vectors of accumulators + 4 of inputs: 24 of 32 registers */
#elif defined(__AVX__)
#define LANES 8
#define VECS 2 /* 16 registers: 8 accumulators + 2 inputs */
#else
#define LANES 4
#define VECS 2
#endif
#define TILE (VECS * LANES)
#define L2L_MAX_INPUTS 1024 /* a layer's inputs + units; the caller checks it */

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

int l2l_lstm_max_inputs(void) { return L2L_MAX_INPUTS; }

/* The four gates of unit u over a full tile: a 4 x TILE block of accumulators kept in
 * registers while the layer's inputs stream past, one broadcast weight per gate. */
static inline __attribute__((always_inline)) void gates_full_tile(
    const float *const *rows, int64_t width, const float *weight, const float *bias, int64_t n, int64_t u,
    float gates[4][TILE])
{
    vec acc[4][VECS];
    const float *w[4];
    for (int g = 0; g < 4; g++) {
        w[g] = weight + (g * n + u) * width;
        for (int v = 0; v < VECS; v++) acc[g][v] = (vec){0} + bias[g * n + u];
    }
    for (int64_t j = 0; j < width; j++) {
        vec x[VECS];
        for (int v = 0; v < VECS; v++) x[v] = load(rows[j] + v * LANES);
        for (int g = 0; g < 4; g++) {
            float wj = w[g][j];
            for (int v = 0; v < VECS; v++) acc[g][v] += wj * x[v];
        }
    }
    for (int g = 0; g < 4; g++)
        for (int v = 0; v < VECS; v++) store(gates[g] + v * LANES, acc[g][v]);
}

/* The same for the last, partial tile, plainly. */
static void gates_partial_tile(
    const float *const *rows, int64_t width, const float *weight, const float *bias, int64_t n, int64_t u,
    int len, float gates[4][TILE])
{
    for (int g = 0; g < 4; g++) {
        const float *w = weight + (g * n + u) * width;
        for (int t = 0; t < len; t++) {
            float s = bias[g * n + u];
            for (int64_t j = 0; j < width; j++) s += w[j] * rows[j][t];
            gates[g][t] = s;
        }
    }
}

typedef struct {
    int64_t coordinates;
    int layers;
    const int64_t *units;
    const float *const *weights, *const *biases;
    const float *const *h_in, *const *c_in;
    float *const *h_out, *const *c_out;
    const float *grad, *params;
    float *params_out;
    const float *head_weight; /* NULL: the last layer has one unit, whose hidden state is the output */
    float head_bias, output_scale;
    float inv_p, exp_p, exp_minus_p;
} step_args;

/* The work item of a thread: a block of BLOCK coordinates (a multiple of every TILE). Within it the loops run unit by
 * unit and, for each unit, sweep the block tile by tile, so that every state row is read
 * and written in one long run (2 KB) rather than in short runs interleaved with some 80
 * other rows: the hardware prefetcher follows a few dozen streams, and with several seeds'
 * states (beyond the caches) the short runs left the kernel waiting on memory most of the
 * time. The block's input rows stay in L2 while the units sweep them again. */
#define BLOCK 512

static inline __attribute__((always_inline)) void block_step(const step_args *a, int64_t k0, int len)
{
    const int64_t N = a->coordinates;
    float features[2][BLOCK], gates[4][TILE];
    const float *rows[L2L_MAX_INPUTS];
    /* preprocess_rows: log(max(|g|, e^-p)) / p and clamp(e^p g, -1, 1); NaN stays NaN */
#pragma omp simd
    for (int t = 0; t < len; t++) {
        float g = a->grad[k0 + t], m = fabsf(g), s = g * a->exp_p;
        features[0][t] = logf(m < a->exp_minus_p ? a->exp_minus_p : m) * a->inv_p;
        features[1][t] = s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s);
    }
    for (int l = 0; l < a->layers; l++) {
        int64_t n = a->units[l], inputs = l == 0 ? 2 : a->units[l - 1];
        for (int64_t u = 0; u < n; u++) {
            for (int t0 = 0; t0 < len; t0 += TILE) {
                int m = len - t0 < TILE ? len - t0 : TILE;
                for (int64_t j = 0; j < inputs; j++)
                    rows[j] = (l == 0 ? features[j] + t0 : a->h_out[l - 1] + j * N + k0 + t0);
                for (int64_t j = 0; j < n; j++) rows[inputs + j] = a->h_in[l] + j * N + k0 + t0;
                if (m == TILE) /* constant length: the loops unroll into registers */
                    gates_full_tile(rows, inputs + n, a->weights[l], a->biases[l], n, u, gates);
                else
                    gates_partial_tile(rows, inputs + n, a->weights[l], a->biases[l], n, u, m, gates);
                const float *c_prev = a->c_in[l] + u * N + k0 + t0;
                float *c = a->c_out[l] + u * N + k0 + t0, *h = a->h_out[l] + u * N + k0 + t0;
#pragma omp simd
                for (int t = 0; t < m; t++) {
                    float c_new = sigmoid(gates[1][t]) * c_prev[t] + sigmoid(gates[0][t]) * tanhf(gates[2][t]);
                    c[t] = c_new;
                    h[t] = sigmoid(gates[3][t]) * tanhf(c_new);
                }
            }
        }
    }
    const int64_t n = a->units[a->layers - 1];
    const float *h = a->h_out[a->layers - 1] + k0;
#pragma omp simd
    for (int t = 0; t < len; t++) {
        float out = h[t];
        if (a->head_weight) {
            out = a->head_bias;
            for (int64_t j = 0; j < n; j++) out += a->head_weight[j] * h[j * N + t];
        }
        a->params_out[k0 + t] = a->params[k0 + t] + a->output_scale * out;
    }
}

void l2l_lstm_step(
    int64_t coordinates, int layers, const int64_t *units, const float *const *weights, const float *const *biases,
    const float *const *h_in, const float *const *c_in, float *const *h_out, float *const *c_out,
    const float *grad, float preprocess_p, const float *head_weight, float head_bias,
    const float *params, float *params_out, float output_scale, int threads)
{
    const step_args a = {
        coordinates, layers, units, weights, biases, h_in, c_in, h_out, c_out, grad, params, params_out,
        head_weight, head_bias, output_scale, 1.0f / preprocess_p, expf(preprocess_p), expf(-preprocess_p),
    };
    const int64_t blocks = (coordinates + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < blocks; k++) {
        int64_t k0 = k * BLOCK;
        block_step(&a, k0, coordinates - k0 < BLOCK ? (int)(coordinates - k0) : BLOCK);
    }
}
