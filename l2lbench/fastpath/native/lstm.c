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
#include <stdlib.h>
#include <string.h>
#include <omp.h>

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

/* Register tiles: VECS vectors of coordinates per gate in the forward; in the backward,
 * JB input rows x VECS vectors (W^T dG) and RB gate rows x 4 input rows (dG [x; h; 1]^T),
 * each sized to the vector registers at hand (32 with AVX-512, 16 below). */
#if defined(__AVX512F__)
#define LANES 16
#define VECS 4 /* 4 gates x 4 vectors of accumulators + 4 of inputs: 24 of 32 registers */
#define JB 5   /* 20 accumulators + 4 gradient vectors + a weight */
#define RB 5   /* 20 accumulators + 5 + 4 operands */
#elif defined(__AVX__)
#define LANES 8
#define VECS 2 /* 16 registers: 8 accumulators + 2 inputs */
#define JB 4
#define RB 2
#else
#define LANES 4
#define VECS 2
#define JB 4
#define RB 2
#endif
#define TILE (VECS * LANES)
#define L2L_MAX_INPUTS 1024 /* a layer's inputs + units; the caller checks it */

typedef float vec __attribute__((vector_size(LANES * sizeof(float))));

static inline vec load(const float *p) { vec v; memcpy(&v, p, sizeof v); return v; }
static inline void store(float *p, vec v) { memcpy(p, &v, sizeof v); }
static inline float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

int l2l_lstm_max_inputs(void) { return L2L_MAX_INPUTS; }
/* The version of this file's interface, checked by the loader against the signature table
   in lstm.py (ABI_VERSIONS in build.py): bump both with any change of a signature. */
#define L2L_ABI_VERSION 1
int l2l_abi_version(void) { return L2L_ABI_VERSION; }

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

/* One layer over a block [k0, k0 + len): for each unit, tile by tile, its four gates in
 * registers, then the new cell and hidden state, and (gates_out not NULL: meta-training)
 * the activated gates the backward needs. Row j of the layer's input is x + j * x_stride
 * (x already at the block's first coordinate); every other array is (rows, N) from 0. */
static inline __attribute__((always_inline)) void layer_block(
    int64_t N, int64_t inputs, int64_t n, const float *weight, const float *bias, const float *x, int64_t x_stride,
    const float *h, const float *c, float *gates_out, float *h_out, float *c_out, int64_t k0, int len)
{
    const float *rows[L2L_MAX_INPUTS];
    float gates[4][TILE];
    for (int64_t u = 0; u < n; u++) {
        for (int t0 = 0; t0 < len; t0 += TILE) {
            const int m = len - t0 < TILE ? len - t0 : TILE;
            const int64_t at = k0 + t0;
            for (int64_t j = 0; j < inputs; j++) rows[j] = x + j * x_stride + t0;
            for (int64_t j = 0; j < n; j++) rows[inputs + j] = h + j * N + at;
            if (m == TILE) /* constant length: the loops unroll into registers */
                gates_full_tile(rows, inputs + n, weight, bias, n, u, gates);
            else
                gates_partial_tile(rows, inputs + n, weight, bias, n, u, m, gates);
            const float *c_prev = c + u * N + at;
            float *c_new = c_out + u * N + at, *h_new = h_out + u * N + at;
            float *act[4] = {NULL, NULL, NULL, NULL}; /* rows u of the i, f, a, o blocks */
            if (gates_out)
                for (int q = 0; q < 4; q++) act[q] = gates_out + (q * n + u) * N + at;
#pragma omp simd
            for (int t = 0; t < m; t++) {
                float i = sigmoid(gates[0][t]), f = sigmoid(gates[1][t]), a = tanhf(gates[2][t]);
                float o = sigmoid(gates[3][t]), cell = f * c_prev[t] + i * a;
                if (gates_out) { act[0][t] = i; act[1][t] = f; act[2][t] = a; act[3][t] = o; }
                c_new[t] = cell;
                h_new[t] = o * tanhf(cell);
            }
        }
    }
}

static inline __attribute__((always_inline)) void block_step(const step_args *a, int64_t k0, int len)
{
    const int64_t N = a->coordinates;
    float features[2][BLOCK];
    /* preprocess_rows: log(max(|g|, e^-p)) / p and clamp(e^p g, -1, 1); NaN stays NaN */
#pragma omp simd
    for (int t = 0; t < len; t++) {
        float g = a->grad[k0 + t], m = fabsf(g), s = g * a->exp_p;
        features[0][t] = logf(m < a->exp_minus_p ? a->exp_minus_p : m) * a->inv_p;
        features[1][t] = s > 1.0f ? 1.0f : (s < -1.0f ? -1.0f : s);
    }
    for (int l = 0; l < a->layers; l++) {
        const int64_t inputs = l == 0 ? 2 : a->units[l - 1];
        layer_block(N, inputs, a->units[l], a->weights[l], a->biases[l],
                    l == 0 ? features[0] : a->h_out[l - 1] + k0, l == 0 ? BLOCK : N,
                    a->h_in[l], a->c_in[l], NULL, a->h_out[l], a->c_out[l], k0, len);
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

/* ---- Meta-training: one layer's forward, keeping its activated gates, and its backward ----
 * The same cell as above for one layer at a time, so that autograd can chain layers, steps
 * and whatever composed the weights (MTL2L's hypernetworks). Layouts: x (inputs, N),
 * h and c (n, N), gates (4n, N) activated (i, f, a, o), weight (4n, inputs + n). */

void l2l_lstm_layer_forward(
    int64_t N, int64_t inputs, int64_t n, const float *weight, const float *bias, const float *x, const float *h,
    const float *c, float *gates_out, float *h_out, float *c_out, int threads)
{
    const int64_t blocks = (N + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t k = 0; k < blocks; k++) {
        const int64_t k0 = k * BLOCK;
        layer_block(N, inputs, n, weight, bias, x + k0, N, h, c, gates_out, h_out, c_out, k0,
                    N - k0 < BLOCK ? (int)(N - k0) : BLOCK);
    }
}

/* W^T dG over a block: the gradients of the layer's input rows j0..width-1 (x's, then h's),
 * JB rows at a time per tile, so that each gate gradient loaded serves JB x VECS FMAs. */
static void input_gradients(const float *weight, const float *dG, int64_t width, int64_t R, int64_t j0,
    int64_t inputs, float *d_x, float *d_h, int64_t N, int64_t k0, int len)
{
    for (int64_t j = j0; j < width; j += JB) {
        const int jn = width - j < JB ? (int)(width - j) : JB;
        float *out[JB];
        for (int q = 0; q < jn; q++) out[q] = (j + q < inputs ? d_x + (j + q) * N : d_h + (j + q - inputs) * N) + k0;
        int t0 = 0;
        for (; t0 + TILE <= len; t0 += TILE) {
            vec s[JB][VECS];
            for (int q = 0; q < JB; q++) for (int v = 0; v < VECS; v++) s[q][v] = (vec){0};
            for (int64_t r = 0; r < R; r++) {
                vec g[VECS];
                for (int v = 0; v < VECS; v++) g[v] = load(dG + r * BLOCK + t0 + v * LANES);
                for (int q = 0; q < JB; q++) {
                    const float w = q < jn ? weight[r * width + j + q] : 0.0f;
                    for (int v = 0; v < VECS; v++) s[q][v] += w * g[v];
                }
            }
            for (int q = 0; q < jn; q++) for (int v = 0; v < VECS; v++) store(out[q] + t0 + v * LANES, s[q][v]);
        }
        for (int q = 0; q < jn; q++)
            for (int t = t0; t < len; t++) {
                float s = 0.0f;
                for (int64_t r = 0; r < R; r++) s += weight[r * width + j + q] * dG[r * BLOCK + t];
                out[q][t] = s;
            }
    }
}

/* dG [x; h; 1]^T over a block, added lane-wise into the thread's partial sums: RB gate rows
 * by 4 input rows of accumulators in registers for the whole block, then one addition each. */
static void weight_gradients(const float *dG, const float *const *rows, int64_t cols, int64_t R, vec *acc, int len)
{
    const int full = len / LANES * LANES;
    for (int64_t r = 0; r < R; r += RB) {
        const int rn = R - r < RB ? (int)(R - r) : RB;
        for (int64_t j = 0; j < cols; j += 4) {
            const int jn = cols - j < 4 ? (int)(cols - j) : 4;
            vec s[RB][4];
            for (int a = 0; a < RB; a++) for (int q = 0; q < 4; q++) s[a][q] = (vec){0};
            for (int t = 0; t < full; t += LANES) {
                vec g[RB], in[4];
                for (int a = 0; a < RB; a++) g[a] = a < rn ? load(dG + (r + a) * BLOCK + t) : (vec){0};
                for (int q = 0; q < 4; q++) in[q] = q < jn ? load(rows[j + q] + t) : (vec){0};
                for (int a = 0; a < RB; a++) for (int q = 0; q < 4; q++) s[a][q] += g[a] * in[q];
            }
            for (int a = 0; a < rn; a++)
                for (int q = 0; q < jn; q++) {
                    vec *target = acc + (r + a) * cols + j + q;
                    *target += s[a][q];
                    for (int t = full; t < len; t++) (*target)[0] += dG[(r + a) * BLOCK + t] * rows[j + q][t];
                }
        }
    }
}

/* The backward of l2l_lstm_layer_forward. Per block, first the gate gradients unit by unit
 * (long runs over the saved rows, as in the forward) into a per-thread block buffer, then
 * the input gradients W^T dG and the weight gradient dG [x; h; 1]^T from that buffer. The
 * weight gradient sums over all coordinates: each thread keeps lane-wise partial sums,
 * added up once at the end, so for a given thread count every call gives the same result.
 * d_x may be NULL (inputs that need no gradient). Returns 0, or 1 when the scratch memory
 * cannot be allocated. */
int l2l_lstm_layer_backward(
    int64_t N, int64_t inputs, int64_t n, const float *weight, const float *x, const float *h, const float *c,
    const float *gates, const float *c_new, const float *dh, const float *dc, float *d_x, float *d_h, float *d_c,
    float *d_wb, int threads)
{
    const int64_t width = inputs + n, R = 4 * n, cols = width + 1; /* + 1: the bias */
    const int64_t blocks = (N + BLOCK - 1) / BLOCK;
    const size_t partial_bytes = (size_t)threads * R * cols * sizeof(vec); /* a multiple of the alignment */
    vec *partial = aligned_alloc(sizeof(vec), partial_bytes);
    float *scratch = aligned_alloc(sizeof(vec), (size_t)threads * R * BLOCK * sizeof(float));
    float *ones = malloc(BLOCK * sizeof(float)); /* the bias's input row */
    int used = 1;
    if (!partial || !scratch || !ones) { free(partial); free(scratch); free(ones); return 1; }
    memset(partial, 0, partial_bytes);
    for (int t = 0; t < BLOCK; t++) ones[t] = 1.0f;
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num();
#pragma omp single
        used = omp_get_num_threads();
        vec *acc = partial + (int64_t)tid * R * cols;
        float *dG = scratch + (int64_t)tid * R * BLOCK;
        const float *rows[L2L_MAX_INPUTS + 1];
#pragma omp for schedule(static)
        for (int64_t k = 0; k < blocks; k++) {
            const int64_t k0 = k * BLOCK;
            const int len = N - k0 < BLOCK ? (int)(N - k0) : BLOCK;
            /* gate gradients: h' = o tanh(c'), c' = f c + i a */
            for (int64_t u = 0; u < n; u++) {
                const int64_t at = u * N + k0;
                const float *i = gates + at, *f = i + n * N, *a = f + n * N, *o = a + n * N;
                float *di = dG + u * BLOCK, *df = di + n * BLOCK, *da = df + n * BLOCK, *d_o = da + n * BLOCK;
#pragma omp simd
                for (int t = 0; t < len; t++) {
                    float tc = tanhf(c_new[at + t]), g = dh[at + t];
                    float dcell = g * o[t] * (1.0f - tc * tc) + dc[at + t];
                    d_o[t] = g * tc * o[t] * (1.0f - o[t]);
                    di[t] = dcell * a[t] * i[t] * (1.0f - i[t]);
                    df[t] = dcell * c[at + t] * f[t] * (1.0f - f[t]);
                    da[t] = dcell * i[t] * (1.0f - a[t] * a[t]);
                    d_c[at + t] = dcell * f[t];
                }
            }
            for (int64_t j = 0; j < inputs; j++) rows[j] = x + j * N + k0;
            for (int64_t j = 0; j < n; j++) rows[inputs + j] = h + j * N + k0;
            rows[width] = ones;
            input_gradients(weight, dG, width, R, d_x ? 0 : inputs, inputs, d_x, d_h, N, k0, len);
            weight_gradients(dG, rows, cols, R, acc, len);
        }
    }
    for (int64_t e = 0; e < R * cols; e++) {
        float s = 0.0f;
        for (int tid = 0; tid < used; tid++)
            for (int l = 0; l < LANES; l++) s += partial[(int64_t)tid * R * cols + e][l];
        d_wb[e] = s;
    }
    free(partial);
    free(scratch);
    free(ones);
    return 0;
}
