/* DyMN forward pass with each dynamic block fused by hand: the ``fused`` runtime backend. It also
   runs MobileNetV3 ("mn") blocks through the same rows with static kernels (KIND_MN below).

   Why hand-written: ONNX Runtime and OpenVINO run a dynamic block as ~40 separate kernels, most
   of them memory-bound passes over the full activation (context pooling, Dy-ReLU, coordinate
   attention, layout reorders), and both lose their fast convolution paths when the weights are
   computed per input (docs/benchmarks.md has the profiles). No standard ONNX graph can say
   "aggregate the kernel for this input, then convolve with the epilogue fused". Here each block is
   the context (small), its three kernels aggregated once, then one pass per output row:
     1. the expansion rows it needs (1x1 GEMM, BN folded, activation) into a small ring of
        zero-bordered rows, each row computed once;
     2. the depthwise convolution with Dy-ReLU and coordinate attention in its epilogue;
     3. the 1x1 projection with BN, the residual, and the next block's context pooling sums;
   so a row's data stays in L2 between the three steps.

   Layout is channels-last (F, T, C), one window at a time. Every channel count is a multiple of 8.
   Vectors are GCC vector extensions of 8 floats: AVX2/FMA when compiled with -mavx2 -mfma,
   SSE or NEON register pairs otherwise. With -mavx512f the GEMM tiles, their epilogue and the
   depthwise convolution also run on 16 floats (fused_width.h), with the same operations per
   output in the same order, so the AVX2 and AVX-512 builds give bit-identical logits. Sums run in
   float32 in a different order than PyTorch; parity with PyTorch is tested to 1e-4 on logits
   (tests/runtime/test_fused_backend.py).

   Python side: runtime/backends/fused.py (ctypes structs mirror Block and Net below).
   Profiling build: -DPROFILE times context / kernels / rows per block into dymn_prof. */

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef float v8 __attribute__((vector_size(32)));
#define VL 8

static inline v8 ld(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }
#ifdef __AVX512F__
#include <immintrin.h>
typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline v16 splat16(float x) { return (v16)_mm512_set1_ps(x); }
#endif
typedef int v8i __attribute__((vector_size(32)));
static inline v8 vselect(v8i m, v8 a, v8 b) { return (v8)(((v8i)a & m) | ((v8i)b & ~m)); }
#ifdef __AVX__
/* vmaxps/vminps compute exactly a > b ? a : b and a < b ? a : b (NaN included); GCC compiles the
   generic select below to a compare and a blend, two instructions where these take one. */
static inline v8 vmax(v8 a, v8 b) { return __builtin_ia32_maxps256(a, b); }
static inline v8 vmin(v8 a, v8 b) { return __builtin_ia32_minps256(a, b); }
/* a * b rounded on its own: GCC may fuse a plain a * b + c into one FMA, and did so in the AVX-512
   build's GEMM epilogue but not in the AVX2 one, so the two builds' logits differed by ~4e-6. */
static inline v8 vmul(v8 a, v8 b) { return __builtin_ia32_mulps256(a, b); }
#else
static inline v8 vmul(v8 a, v8 b) { return a * b; } /* x86 generic: no FMA to fuse into (aarch64 may fuse) */
static inline v8 vmax(v8 a, v8 b) { return vselect(a > b, a, b); }
static inline v8 vmin(v8 a, v8 b) { return vselect(a < b, a, b); }
#endif

#ifdef PROFILE /* keep the phases apart in perf, and time them: dymn_prof[block][context, kernels + expansion, depthwise, projection] */
#include <time.h>
#define PHASE __attribute__((noinline))
double dymn_prof[32][4];
static int prof_block;
static double prof_last;
static double prof_now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + 1e-9 * ts.tv_nsec; }
#define TICK(phase) do { double t_ = prof_now(); dymn_prof[prof_block][phase] += t_ - prof_last; prof_last = t_; } while (0)
#define PROF_BLOCK(i) do { prof_block = (i); } while (0)
#else
#define PHASE
#define TICK(phase) do { } while (0)
#define PROF_BLOCK(i) do { } while (0)
#endif

/* exp(x) for 8 lanes: Cephes' range reduction and degree-5 polynomial (relative error ~1e-7).
   Written out because glibc's vector expf needs -ffast-math, which would also reorder our sums. */
static inline v8 vexp(v8 x) {
    x = vmin(vmax(x, splat(-87.3f)), splat(88.3f));
    v8 y = x * splat(1.44269504088896341f) + splat(0.5f);
    v8i ni = __builtin_convertvector(y, v8i);
    v8 n = __builtin_convertvector(ni, v8);
    v8i down = n > y; /* truncation rounded a negative value up: floor it */
    ni += down;         /* lanes are -1 where true */
    n = __builtin_convertvector(ni, v8);
    v8 r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
    v8 p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.f);
    return (v8)((v8i)p + (ni << 23));
}

static inline v8 vsigmoid(v8 x) { return splat(1.f) / (splat(1.f) + vexp(-x)); }

/* In place over n floats, n a multiple of 8. */
PHASE static void sigmoid_inplace(float *x, size_t n) {
    for (size_t i = 0; i < n; i += VL) st(x + i, vsigmoid(ld(x + i)));
}

enum { ACT_NONE = 0, ACT_RELU = 1, ACT_HSWISH = 2 };

static inline v8 activate(v8 v, int act) {
    if (act == ACT_RELU) return vmax(v, splat(0.f));
    if (act == ACT_HSWISH) return v * vmin(vmax(v + splat(3.f), splat(0.f)), splat(6.f)) * splat(1.f / 6.f);
    return v;
}

/* The next DyMN block's weight arrays, which a block's rows prefetch while their GEMMs run (Prefetch). */
#define STREAM_PARTS 8
typedef struct { const char *base[STREAM_PARTS]; size_t bytes[STREAM_PARTS]; int n; size_t total; } WeightStream;

/* One thread's walk over its share of a WeightStream: a few cache lines per GEMM tile.
   dymn10 reads 42 MB of weights per window, more than the 32 MB L3 of machine B, so the next block's
   kernel banks, Dy-ReLU coefficient net and gates come from DRAM, and their aggregation and GEMVs
   wait for it. Prefetched a few lines at a time while this block's GEMMs run, dymn10 ran 2-3 % faster
   (A/B of builds in one process, machine B). PREFETCH_LINES 2-8 measured alike; 16 gained less, and
   prefetching a block's share in one burst per output row was 2-3 % slower: it evicted the current
   block's data from L2. The non-temporal hint (locality 0) did best: 2.9 % against 1.6 % for
   locality 2. */
#define PREFETCH_LINES 4
typedef struct { const WeightStream *s; int part; size_t at, left; } Prefetch;

/* Share c of n of s's cache lines, or nothing when s is NULL. */
static Prefetch prefetch_share(const WeightStream *s, int c, int n) {
    Prefetch p = {NULL, 0, 0, 0};
    if (!s || s->total == 0) return p;
    size_t lines = (s->total + 63) / 64, lo = lines * c / n * 64, hi = lines * (c + 1) / n * 64;
    p.s = s, p.left = hi - lo;
    while (p.part < s->n && lo >= s->bytes[p.part]) lo -= s->bytes[p.part++];
    p.at = lo;
    return p;
}

static inline void prefetch_tick(Prefetch *p) {
    for (int l = 0; l < PREFETCH_LINES && p->left > 0 && p->part < p->s->n; l++) {
        __builtin_prefetch(p->s->base[p->part] + p->at, 0, 0);
        p->at += 64, p->left = p->left > 64 ? p->left - 64 : 0;
        if (p->at >= p->s->bytes[p->part]) p->part++, p->at = 0;
    }
}

/* What a GEMM does with each output: out = act(acc * scale + shift) [+ res]; pool sums. */
typedef struct {
    const float *scale, *shift; /* per output channel; scale may be NULL */
    int act;
    const float *res; int res_stride; /* residual, same (t, c) layout as out, row stride per f */
    float *pool_f, *pool_t;           /* when set: += output into [f][c] and [t][c] */
    Prefetch *prefetch;               /* when set: advanced once per tile */
} Epi;

/* Which epilogue a GEMM runs. The hot ones (expansion, projection) get copies with these flags
   known at compile time: with them read at run time per vector, the epilogue's branches and the
   stack copies of the accumulators cost as much as the arithmetic for cin 8..32 (the 8 -> 24
   expansion ran at 20 GMAC/s, 34 with its own copy; machine B). */
typedef struct { int scale, act, res, pool; } Mode;

/* Hardswish for the GEMM epilogue, its constants read through volatile so they are loaded where
   used. Left to itself, GCC kept one of them in a register across the tile loop, and the 6 x 16
   tile, which needs all 16, then kept an accumulator on the stack: the 80 -> 480 expansion ran at
   22 instead of 47 GMAC/s (machine B). */
static const float HS_THREE = 3.f, HS_SIX = 6.f, HS_SIXTH = 1.f / 6.f;
static inline v8 hswish_in_tile(v8 v) {
    v8 three = splat(*(const volatile float *)&HS_THREE), six = splat(*(const volatile float *)&HS_SIX);
    v8 sixth = splat(*(const volatile float *)&HS_SIXTH);
    return v * vmin(vmax(v + three, splat(0.f)), six) * sixth;
}

/* The tile epilogue's columns and the depthwise convolution's channel groups (fused_width.h), for
   8-float vectors and, in the AVX-512 build, for 16-float ones. */
#define DV v8
#define DV_LD ld
#define DV_ST st
#define DV_MAX vmax
#define DV_ACT activate
#define DV_NAME(n) n##_v8
#define DV_SPLAT splat
#define DV_MUL vmul
#define DV_HSWISH_TILE hswish_in_tile
#include "fused_width.h" /* which undefines the DV_ macros */
#ifdef __AVX512F__
static inline void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }
static inline v16 vmax16(v16 a, v16 b) { return (v16)_mm512_max_ps((__m512)a, (__m512)b); }
static inline v16 vmin16(v16 a, v16 b) { return (v16)_mm512_min_ps((__m512)a, (__m512)b); }
/* As vmul. Not _mm512_mul_ps: GCC writes that as a plain a * b, which it may fuse into an FMA. */
static inline v16 vmul16(v16 a, v16 b) { return (v16)_mm512_mul_round_ps((__m512)a, (__m512)b, _MM_FROUND_CUR_DIRECTION); }
static inline v16 hswish16_in_tile(v16 v) { /* hswish_in_tile */
    v16 three = splat16(*(const volatile float *)&HS_THREE), six = splat16(*(const volatile float *)&HS_SIX);
    v16 sixth = splat16(*(const volatile float *)&HS_SIXTH);
    return v * vmin16(vmax16(v + three, splat16(0.f)), six) * sixth;
}
static inline v16 activate16(v16 v, int act) { /* activate(), the same operations in the same order */
    if (act == ACT_RELU) return vmax16(v, splat16(0.f));
    if (act == ACT_HSWISH) return v * vmin16(vmax16(v + splat16(3.f), splat16(0.f)), splat16(6.f)) * splat16(1.f / 6.f);
    return v;
}
#define DV v16
#define DV_LD ld16
#define DV_ST st16
#define DV_MAX vmax16
#define DV_ACT activate16
#define DV_NAME(n) n##_v16
#define DV_SPLAT splat16
#define DV_MUL vmul16
#define DV_HSWISH_TILE hswish16_in_tile
#include "fused_width.h" /* which undefines the DV_ macros */
/* Channel groups of 16 while they fit, then of 8: GROUPS(f, args) calls f_v16 or f_v8 per group c. */
#define GROUPS(f, ...) do { \
        int c = 0; \
        for (; c + 16 <= C; c += 16) f##_v16(__VA_ARGS__); \
        for (; c < C; c += VL) f##_v8(__VA_ARGS__); \
    } while (0)
#else
#define GROUPS(f, ...) do { for (int c = 0; c < C; c += VL) f##_v8(__VA_ARGS__); } while (0)
#endif

#ifdef __AVX512F__
/* One tile with AVX-512: R rows x (W vectors of 16 + E vectors of 8) output channels. 512-bit FMAs
   do twice the work of AVX2's per instruction, and the 32 registers hold R * (W + E) <= 24
   accumulators. The epilogue, too, runs on 16-float vectors. */
static inline __attribute__((always_inline)) void tile(
    const float *in, int cin, const float *wb, int ldw, int cout, int co, float *out, int R, int W, int E,
    const Epi *e, Mode m, int f, int t0, const float *res) {
    v16 a16[12][2];
    v8 a8[12];
    for (int r = 0; r < R; r++) {
        for (int w = 0; w < W; w++) a16[r][w] = splat16(0.f);
        if (E) a8[r] = splat(0.f);
    }
    for (int ci = 0; ci < cin; ci++) {
        const float *wr = wb + (size_t)ci * ldw;
        v16 w16[2];
        v8 w8 = splat(0.f);
        for (int w = 0; w < W; w++) w16[w] = ld16(wr + w * 16);
        if (E) w8 = ld(wr + W * 16);
        for (int r = 0; r < R; r++) {
            /* The 8-float part takes the low half of the 16-float broadcast: one load, not two.
               Broadcast separately, the loads outnumbered the FMAs in 24-wide groups: a 64 -> 24
               GEMM ran at 62 GMAC/s, now 80 (harness, machine C). */
            v16 x = splat16(in[r * cin + ci]);
            for (int w = 0; w < W; w++) a16[r][w] += x * w16[w];
            if (E) a8[r] += (v8)_mm512_castps512_ps256((__m512)x) * w8;
        }
    }
    for (int w = 0; w < W; w++) {
        v16 col[12];
        for (int r = 0; r < R; r++) col[r] = a16[r][w];
        epilogue_column_v16(col, R, cout, co + 16 * w, out, e, m, f, t0, res);
    }
    if (E) epilogue_column_v8(a8, R, cout, co + 16 * W, out, e, m, f, t0, res);
}
#else
/* One tile: R rows (positions) x NV vectors of 8 output channels, accumulated in registers.
   R * NV <= 12 keeps accumulators, weights and the broadcast input within AVX2's 16 registers. */
static inline __attribute__((always_inline)) void tile(
    const float *in, int cin, const float *wb, int ldw, int cout, int co, float *out, int R, int NV,
    const Epi *e, Mode m, int f, int t0, const float *res) {
    v8 acc[12][3];
    for (int r = 0; r < R; r++) for (int v = 0; v < NV; v++) acc[r][v] = splat(0.f);
    for (int ci = 0; ci < cin; ci++) {
        v8 wv[3];
        for (int v = 0; v < NV; v++) wv[v] = ld(wb + (size_t)ci * ldw + v * VL);
        for (int r = 0; r < R; r++) {
            v8 x = splat(in[r * cin + ci]);
            for (int v = 0; v < NV; v++) acc[r][v] += x * wv[v];
        }
    }
#pragma GCC unroll 3
    for (int v = 0; v < NV; v++) {
        v8 col[12];
        for (int r = 0; r < R; r++) col[r] = acc[r][v];
        epilogue_column_v8(col, R, cout, co + v * VL, out, e, m, f, t0, res);
    }
}
#endif

#ifdef __AVX512F__
/* Width in floats of the GEMM's column group starting at co: 32, with 8, 24 or 40 (two or three
   vectors of 16 plus one of 8) where cout is an odd number of 8s, and 16 at the end. */
static inline int panel_width(int cout, int co) {
    int n = cout - co;
    return n % 16 == 8 && n <= 40 ? n : n >= 32 ? 32 : 16;
}
#define TILE(R, W, E) tile(a, cin, wb, ldw, cout, co, o, R, W, E, e, m, f, t, rs)
#define CASE(R, W, E) case R: TILE(R, W, E); break;
#define ROWS_UP_TO_8(W, E) CASE(8, W, E) CASE(7, W, E) CASE(6, W, E) CASE(5, W, E) CASE(4, W, E) CASE(3, W, E) CASE(2, W, E)
#define ROWS_UP_TO_12(W, E) CASE(12, W, E) CASE(11, W, E) CASE(10, W, E) CASE(9, W, E) ROWS_UP_TO_8(W, E)
static inline int panel_rows(int width) { return width == 40 ? 8 : 12; }
static inline __attribute__((always_inline)) void panel_tile(const float *a, int cin, const float *wb, int ldw, int cout, int co,
                                                              float *o, int width, int rows, const Epi *e, Mode m, int f, int t,
                                                              const float *rs) {
    switch (width) {
    case 32: switch (rows) { ROWS_UP_TO_12(2, 0) default: TILE(1, 2, 0); } break;
    case 40: switch (rows) { ROWS_UP_TO_8(2, 1) default: TILE(1, 2, 1); } break;
    case 24: switch (rows) { ROWS_UP_TO_12(1, 1) default: TILE(1, 1, 1); } break;
    case 16: switch (rows) { ROWS_UP_TO_12(1, 0) default: TILE(1, 1, 0); } break;
    default: switch (rows) { ROWS_UP_TO_12(0, 1) default: TILE(1, 0, 1); }
    }
}
#else
/* Width in floats of the GEMM's column group starting at co: 24, 16 or 8 (3, 2 or 1 vectors). */
static inline int panel_width(int cout, int co) {
    int n = cout - co;
    return (n >= 24 && n % 16 != 0 ? 3 : n >= 16 ? 2 : 1) * VL;
}
#define TILE(R, NV) tile(a, cin, wb, ldw, cout, co, o, R, NV, e, m, f, t, rs)
#define CASE(R, NV) case R: TILE(R, NV); break;
static inline int panel_rows(int width) { return width == 24 ? 4 : width == 16 ? 6 : 12; }
static inline __attribute__((always_inline)) void panel_tile(const float *a, int cin, const float *wb, int ldw, int cout, int co,
                                                              float *o, int width, int rows, const Epi *e, Mode m, int f, int t,
                                                              const float *rs) {
    if (width == 24) {
        switch (rows) { CASE(4, 3) CASE(3, 3) CASE(2, 3) default: TILE(1, 3); }
    } else if (width == 16) {
        switch (rows) { CASE(6, 2) CASE(5, 2) CASE(4, 2) CASE(3, 2) CASE(2, 2) default: TILE(1, 2); }
    } else {
        switch (rows) {
            CASE(12, 1) CASE(11, 1) CASE(10, 1) CASE(9, 1) CASE(8, 1) CASE(7, 1)
            CASE(6, 1) CASE(5, 1) CASE(4, 1) CASE(3, 1) CASE(2, 1) default: TILE(1, 1);
        }
    }
}
#endif

/* out[f][t][:] = epilogue(in[f][t][:] @ w), cout a multiple of 8. w is (cin, cout) row-major, or,
   when packed, one panel per column group: the group at co is (cin, panel_width) row-major at
   w + co * cin (aggregate_packed writes that). Rows of f are in_stride / out_stride floats apart.
   Column groups and rows per tile follow the registers: panel_width and panel_rows. */
static inline __attribute__((always_inline)) void gemm_mode(const float *in, int nf, int nt, int in_stride, int cin,
                                                            const float *w, int packed, int cout, float *out, int out_stride,
                                                            const Epi *e, Mode m) {
    for (int co = 0; co < cout;) {
        int width = panel_width(cout, co), mr = panel_rows(width);
        const float *wb = packed ? w + (size_t)co * cin : w + co;
        int ldw = packed ? width : cout;
        for (int f = 0; f < nf; f++) {
            for (int t = 0; t < nt; t += mr) {
                int rows = nt - t < mr ? nt - t : mr;
                const float *a = in + (size_t)f * in_stride + (size_t)t * cin;
                float *o = out + (size_t)f * out_stride + (size_t)t * cout;
                const float *rs = m.res ? e->res + (size_t)f * e->res_stride + (size_t)t * cout : NULL;
                if (e->prefetch) prefetch_tick(e->prefetch);
                panel_tile(a, cin, wb, ldw, cout, co, o, width, rows, e, m, f, t, rs);
            }
        }
        co += width;
    }
}

/* One function per epilogue. noipa: every call passes nf = 1, and with GCC's constant-propagated
   clone of gemm the whole forward ran 7.8 instead of 5.9 ms (dymn04_edge, machine B). Separate
   functions, not one: with all seven copies inlined into one body, GCC compiled the Hardswish
   copy at half the speed it reaches on its own. */
#define GEMM_FN(NAME, MODE)                                                                                  \
    __attribute__((noipa)) static void NAME(const float *in, int nf, int nt, int in_stride, int cin,         \
                                            const float *w, int packed, int cout, float *out, int out_stride, \
                                            const Epi *e) {                                                  \
        gemm_mode(in, nf, nt, in_stride, cin, w, packed, cout, out, out_stride, e, MODE);                   \
    }
GEMM_FN(gemm_shift, ((Mode){0, ACT_NONE, 0, 0}))
GEMM_FN(gemm_shift_relu, ((Mode){0, ACT_RELU, 0, 0}))
GEMM_FN(gemm_shift_hswish, ((Mode){0, ACT_HSWISH, 0, 0}))
GEMM_FN(gemm_res, ((Mode){0, ACT_NONE, 1, 0}))
/* DyMN: BN's scale in the epilogue, not in the aggregated kernel (see aggregate_packed). */
GEMM_FN(gemm_scale_relu, ((Mode){1, ACT_RELU, 0, 0}))
GEMM_FN(gemm_scale_hswish, ((Mode){1, ACT_HSWISH, 0, 0}))
GEMM_FN(gemm_scale_res_pool, ((Mode){1, ACT_NONE, 1, 1}))
GEMM_FN(gemm_scale_pool, ((Mode){1, ACT_NONE, 0, 1}))
GEMM_FN(gemm_any, ((Mode){e->scale != NULL, e->act, e->res != NULL, e->pool_f != NULL}))

/* gemm_mode with the epilogue that e asks for; e->shift is required. */
static void gemm(const float *in, int nf, int nt, int in_stride, int cin, const float *w, int packed, int cout, float *out,
                 int out_stride, const Epi *e) {
    int sc = e->scale != NULL, res = e->res != NULL, pool = e->pool_f != NULL;
    void (*fn)(const float *, int, int, int, int, const float *, int, int, float *, int, const Epi *) = gemm_any;
    if (!sc && !res && !pool) /* mn expansions, gates */
        fn = e->act == ACT_RELU ? gemm_shift_relu : e->act == ACT_HSWISH ? gemm_shift_hswish : gemm_shift;
    else if (!sc && res && !pool && e->act == ACT_NONE) /* mn projections */
        fn = gemm_res;
    else if (sc && !res && !pool && e->act != ACT_NONE) /* DyMN expansions */
        fn = e->act == ACT_RELU ? gemm_scale_relu : gemm_scale_hswish;
    else if (sc && pool && e->act == ACT_NONE) /* DyMN projections */
        fn = res ? gemm_scale_res_pool : gemm_scale_pool;
    fn(in, nf, nt, in_stride, cin, w, packed, cout, out, out_stride, e);
}

/* out = act(x @ w + bias) for one input row: w (k, n) row-major is read row by row, a contiguous
   stream the prefetcher follows (the column blocks gemm walks for one row were 2 KB strides apart;
   the classifier's 1.9 MB of weights come from L3 every window). n a multiple of 8; rows of w are
   ldw floats apart (n for a whole matrix, more for a slice of its columns). */
static void gemv(const float *x, int k, const float *w, size_t ldw, int n, const float *bias, int act, float *out) {
    memcpy(out, bias, sizeof(float) * n);
    for (int i = 0; i < k; i++) {
        v8 xi = splat(x[i]);
        const float *wi = w + (size_t)i * ldw;
        for (int o = 0; o < n; o += VL) st(out + o, ld(out + o) + xi * ld(wi + o));
    }
    if (act != ACT_NONE)
        for (int o = 0; o < n; o += VL) st(out + o, activate(ld(out + o), act));
}

/* out[c] = mean over n rows of x (rows of C floats, C a multiple of 8), rows summed in order. */
static void mean_rows(const float *x, int n, int C, float *out) {
    for (int c = 0; c < C; c += VL) {
        v8 s = splat(0.f);
        for (int r = 0; r < n; r++) s += ld(x + (size_t)r * C + c);
        st(out + c, s / splat((float)n));
    }
}

enum { KIND_DYMN = 0, KIND_MN = 1 };

/* A block is either DyMN's (dynamic kernels, context, Dy-ReLU, coordinate attention) or
   MobileNetV3's ("mn": static kernels with BN folded in, an activation after the depthwise
   convolution and optional channel squeeze-excitation, whose H is the squeeze width). */
typedef struct {
    int F, T, Fo, To, cin, cexp, cout, k, stride, dil, pad, H, K, residual, exp_act, has_exp;
    int kind, dw_act, has_se;
    float inv_temp;
    const float *exp_w;                     /* (K, cin, cexp) */
    const float *exp_att_w, *exp_att_b;     /* (K, H), (K) */
    const float *exp_scale, *exp_shift;     /* BN, (cexp) */
    const float *dw_w;                      /* (K, k, k, cexp) */
    const float *dw_att_w, *dw_att_b;
    const float *dw_scale, *dw_shift;
    const float *dy_w, *dy_b;               /* (H, 4 cexp), (4 cexp): Dy-ReLU coefficient net */
    const float *lambdas, *init_v;          /* (4), (4) */
    const float *proj_w;                    /* (K, cexp, cout) */
    const float *proj_att_w, *proj_att_b;
    const float *proj_scale, *proj_shift;
    const float *joint_w, *joint_scale, *joint_shift; /* (cin, H), BN (H) */
    const float *cf_w, *cf_b, *ct_w, *ct_b; /* (H, cexp), (cexp) */
    const float *se1_w, *se1_b, *se2_w, *se2_b; /* mn squeeze-excitation: (cexp, H), (H), (H, cexp), (cexp) */
} Block;

#define MAX_THREADS 8

typedef struct {
    int F, T, C0, n_blocks, c_last, c_head, hidden, classes_padded;
    int threads;                            /* 1..MAX_THREADS: the output rows of each block are split between them */
    const float *stem_w;                    /* (3, 3, C0): 3x3 stride-2 convolution of the 1-channel input */
    const float *stem_scale, *stem_shift;
    const Block *blocks;
    const float *outc_w, *outc_scale, *outc_shift; /* (c_last, c_head) */
    const float *fc1_w, *fc1_b;             /* (c_head, hidden) */
    const float *fc2_w, *fc2_b;             /* (hidden, classes_padded) */
    float *work;                            /* caller-owned scratch of dymn_workspace_floats() floats */
    struct Team *team;                      /* from dymn_team_new(threads), or NULL: helpers made for each call */
} Net;

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

/* Scratch layout (floats): two activation buffers, the ring of padded expansion rows, one depthwise output row, and small context buffers. */
typedef struct { size_t act, pad, dw, pool, ctx, agg, rowsum, stash; } Sizes;

static Sizes sizes(const Net *n) {
    Sizes s = {(size_t)((n->F + 1) / 2) * ((n->T + 1) / 2) * n->C0, 0, 0, 0, 0, 0, 0, 0};
    for (int i = 0; i < n->n_blocks; i++) {
        const Block *b = &n->blocks[i];
        s.act = max_sz(s.act, (size_t)b->Fo * b->To * b->cout);
        s.pad = max_sz(s.pad, (size_t)((b->k - 1) * b->dil + 2) * (b->T + 2 * b->pad) * b->cexp);
        s.dw = max_sz(s.dw, (size_t)b->To * b->cexp);
        s.pool = max_sz(s.pool, (size_t)(b->F + b->T) * b->cin + (size_t)(b->Fo + b->To) * b->cout);
        s.ctx = max_sz(s.ctx, (size_t)(b->F + b->T) * (b->cin + 2 * b->H) + (size_t)(b->Fo + b->To) * b->cexp + 8 * (size_t)b->cexp + b->H + 32);
        s.agg = max_sz(s.agg, (size_t)b->cin * b->cexp + (size_t)b->k * b->k * b->cexp + (size_t)b->cexp * b->cout + 4 * (size_t)b->cexp);
        s.rowsum = max_sz(s.rowsum, (size_t)b->To * b->cout);
        s.ctx = max_sz(s.ctx, (size_t)b->cexp + b->H + 16);
        if (b->has_se) s.stash = max_sz(s.stash, (size_t)b->Fo * b->To * b->cexp); /* the depthwise output SE scales */
    }
    const Block *last = &n->blocks[n->n_blocks - 1];
    s.act = max_sz(s.act, (size_t)last->Fo * last->To * n->c_head);
    s.pool = max_sz(s.pool, (size_t)(last->Fo + last->To) * n->c_head);
    return s;
}

size_t dymn_workspace_floats(const Net *n) {
    Sizes s = sizes(n);
    size_t extra = (size_t)(n->threads > 1 ? n->threads - 1 : 0) * (s.pad + s.dw + s.rowsum); /* each helper's own rows */
    return 2 * s.act + s.pad + s.dw + s.pool + s.ctx + s.agg + s.stash + n->c_head + n->hidden + 64 + extra;
}

PHASE static void softmax_attention(const float *w, const float *b, const float *h, int H, int K, float inv_temp, float *a) {
    float mx = -INFINITY;
    for (int k = 0; k < K; k++) {
        float z = b[k];
        for (int j = 0; j < H; j++) z += w[k * H + j] * h[j];
        a[k] = z * inv_temp;
        mx = a[k] > mx ? a[k] : mx;
    }
    float sum = 0.f;
    for (int k = 0; k < K; k++) { a[k] = expf(a[k] - mx); sum += a[k]; }
    for (int k = 0; k < K; k++) a[k] /= sum;
}

/* sum_k a_k bank[k * stride + i .. + 8]: 8 floats of the per-input kernel (both aggregations below).
   The first product is an explicit vmul: with K a constant (aggregate) GCC could otherwise fuse it
   instead of the second into an FMA, and round differently from the loop's a_k b_k + s chain. */
static inline __attribute__((always_inline)) v8 bank_sum(const float *bank, const float *a, int K, size_t stride, size_t i) {
    v8 s = vmul(splat(a[0]), ld(bank + i));
    for (int k = 1; k < K; k++) s += splat(a[k]) * ld(bank + k * stride + i);
    return s;
}

/* dst = (sum_k a_k bank[k]) * scale[column]: the per-input kernel with BN's scale applied.
   Each bank is (rows, channels) row-major, channels a multiple of 8; its K kernels are `stride`
   floats apart (rows * channels for a whole bank, more when rows is a slice of its rows). */
static inline __attribute__((always_inline)) void aggregate_k(const float *bank, const float *a, const int K, size_t rows,
                                                              int channels, size_t stride, const float *scale, float *dst) {
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < channels; c += VL)
            st(dst + r * channels + c, bank_sum(bank, a, K, stride, r * channels + c) * ld(scale + c));
}

/* Both aggregations run a copy with K = 4, every DyMN's (EfficientAT's default), as a constant. With
   K known only at run time GCC kept the loop over banks in bank_sum, and aggregating a block's kernels
   streamed its banks from DRAM at 14 GB/s; with K = 4 fixed, at 36-38 GB/s, which is what one core
   of machine C reads from DRAM at all (a 10-line read loop: 38-40 GB/s). dymn10 aggregates 21 MB of
   banks per window. Same arithmetic in the same order: the kernels are bitwise the same. */
PHASE static void aggregate(const float *bank, const float *a, int K, size_t rows, int channels, size_t stride,
                            const float *scale, float *dst) {
    if (K == 4) aggregate_k(bank, a, 4, rows, channels, stride, scale, dst);
    else aggregate_k(bank, a, K, rows, channels, stride, scale, dst);
}


/* sum_k a_k bank[k] for rows [lo, hi) of a (rows, cout) kernel whose banks are `stride` floats apart,
   without BN's scale: the GEMM's epilogue applies it to each output. Folded into the kernel, it
   rounded every weight a second time, and the seeded dymn04's real-audio row, which amplifies
   float32 rounding, was 9.4e-5 off EfficientAT; applied to the outputs, 4.7e-5. Written
   as the GEMM's packed panels (gemm_mode): each column group's weights then stream contiguously
   through the tile loop, instead of 64-96 bytes from every row of a matrix up to 2.5 KB wide.
   DyMN's expansion and projection kernels always come from here, so a block's rows pass
   packed = (kind == KIND_DYMN) to gemm; mn blocks' static kernels stay row-major.
   GEMM alone, hot caches, machine B: 672 -> 112 at 45 -> 49 GMAC/s, 160 -> 960 at 40 -> 45; the
   narrow expansions of the first blocks (16 -> 64, 72 -> 24) run alike. */
static inline __attribute__((always_inline)) void aggregate_packed_k(const float *bank, const float *a, const int K, int lo,
                                                                     int hi, int rows, int cout, size_t stride, float *dst) {
    for (int r = lo; r < hi; r++) {
        for (int co = 0; co < cout;) {
            int width = panel_width(cout, co);
            float *out = dst + (size_t)co * rows + (size_t)r * width;
            for (int c = 0; c < width; c += VL) st(out + c, bank_sum(bank, a, K, stride, (size_t)r * cout + co + c));
            co += width;
        }
    }
}

PHASE static void aggregate_packed(const float *bank, const float *a, int K, int lo, int hi, int rows, int cout,
                                   size_t stride, float *dst) {
    if (K == 4) aggregate_packed_k(bank, a, 4, lo, hi, rows, cout, stride, dst); /* see aggregate */
    else aggregate_packed_k(bank, a, K, lo, hi, rows, cout, stride, dst);
}

/* EfficientAT's AvgPool2d(3, stride, padding=1) along one axis, padding counted (divides by 3). */
PHASE static void avgpool3(const float *in, int n, int H, int stride, float *out, int n_out) {
    for (int o = 0; o < n_out; o++) {
        for (int h = 0; h < H; h++) {
            float s = 0.f;
            for (int d = -1; d <= 1; d++) {
                int i = o * stride + d;
                if (i >= 0 && i < n) s += in[i * H + h];
            }
            out[o * H + h] = s / 3.f;
        }
    }
}

/* Outputs [to, To) of a DyMN depthwise row one at a time. Out of line: inlined into each of
   depthwise_row's unrolled copies, it made dymn04_edge 1.4 % slower (AVX2 build, A/B). */
__attribute__((noinline)) static void depthwise_tail(const Block *b, const float *const *in_rows, const float *w, const float *bias,
                                                     const float *coef, const float *gf_row, const float *gate_t, float *o, int to,
                                                     int KS, int S) {
    int C = b->cexp, d = b->dil;
    for (; to < b->To; to++) GROUPS(dw_group_one, in_rows, w, bias, coef, gf_row, gate_t, o, C, to, c, KS, S, d);
}

/* One output row of the depthwise k x k convolution with the block's Dy-ReLU (max of two
   per-channel lines) and coordinate attention (times gate_f[f][c] * gate_t[t][c]) applied before
   the store. */
static inline __attribute__((always_inline)) void depthwise_row(
    const Block *b, const float *const *in_rows, const float *w, const float *bias, const float *coef,
    const float *gate_f, const float *gate_t, float *o, int fo, int KS, int S, int REUSE) {
    int C = b->cexp, d = b->dil, to = 0;
    const float *gf_row = gate_f + (size_t)fo * C;
    for (; to + 4 <= b->To; to += 4) GROUPS(dw_group_four, in_rows, w, bias, coef, gf_row, gate_t, o, C, to, c, KS, S, d, REUSE);
    if (to < b->To) depthwise_tail(b, in_rows, w, bias, coef, gf_row, gate_t, o, to, KS, S);
}

/* Out of line (both): inlined into block_rows, they made GCC lay out the DyMN rows 3 % slower. */
__attribute__((noinline)) static void depthwise(const Block *b, const float *const *in_rows, const float *w, const float *bias, const float *coef,
                            const float *gate_f, const float *gate_t, float *out, int fo) {
    int one = b->dil == 1;
    if (b->k == 3 && b->stride == 1 && one) depthwise_row(b, in_rows, w, bias, coef, gate_f, gate_t, out, fo, 3, 1, 1);
    else if (b->k == 5 && b->stride == 1 && one) depthwise_row(b, in_rows, w, bias, coef, gate_f, gate_t, out, fo, 5, 1, 1);
    else if (b->k == 3 && b->stride == 2) depthwise_row(b, in_rows, w, bias, coef, gate_f, gate_t, out, fo, 3, 2, 0);
    else if (b->k == 5 && b->stride == 2) depthwise_row(b, in_rows, w, bias, coef, gate_f, gate_t, out, fo, 5, 2, 0);
    else depthwise_row(b, in_rows, w, bias, coef, gate_f, gate_t, out, fo, b->k, b->stride, 0);
}

/* A MobileNetV3 depthwise row: bias (BN shift; the scale is in the weights) and the block's
   activation; no gates. */
static inline __attribute__((always_inline)) void depthwise_row_mn(
    const Block *b, const float *const *in_rows, const float *w, float *o, int KS, int S, int REUSE, int act) {
    int C = b->cexp, d = b->dil, to = 0;
    const float *bias = b->dw_shift;
    for (; to + 4 <= b->To; to += 4) GROUPS(dw_group_four_mn, in_rows, w, bias, o, C, to, c, KS, S, d, REUSE, act);
    for (; to < b->To; to++) GROUPS(dw_group_one_mn, in_rows, w, bias, o, C, to, c, KS, S, d, act);
}

#define DW_MN(KS, S, REUSE) do { \
        if (b->dw_act == ACT_HSWISH) depthwise_row_mn(b, in_rows, w, out, KS, S, REUSE, ACT_HSWISH); \
        else depthwise_row_mn(b, in_rows, w, out, KS, S, REUSE, ACT_RELU); \
    } while (0)

__attribute__((noinline)) static void depthwise_mn(const Block *b, const float *const *in_rows, const float *w, float *out) {
    int one = b->dil == 1;
    if (b->k == 3 && b->stride == 1 && one) DW_MN(3, 1, 1);
    else if (b->k == 5 && b->stride == 1 && one) DW_MN(5, 1, 1);
    else if (b->k == 3 && b->stride == 2) DW_MN(3, 2, 0);
    else if (b->k == 5 && b->stride == 2) DW_MN(5, 2, 0);
    else depthwise_row_mn(b, in_rows, w, out, b->k, b->stride, 0, b->dw_act);
}

/* What one block's rows need once the context and kernels are known. */
typedef struct {
    const Block *b;
    const float *x;
    float *y, *y_sum_f;
    const float *w_exp, *w_dw, *w_proj, *coef, *gate_f, *gate_t;
    float *stash; /* mn with SE: the whole depthwise output, projected in a second pass */
    int phase;    /* 0: rows (for SE blocks up to the depthwise output); 1: the SE blocks' projection */
    const WeightStream *next; /* the next block's weights, prefetched while the rows run; may be NULL */
} RowJob;

/* The part of a DyMN block's preparation that splits between threads: the two coordinate-attention
   gates, the Dy-ReLU coefficients and the three aggregated kernels. Each thread takes a slice of
   rows or columns, so the results are bitwise the same for any number of threads. */
typedef struct {
    const Block *b;
    const float *h, *pf, *pt;   /* the pooled context and its frequency / time rows */
    const float *att;           /* softmax attention over the K kernels: expansion, depthwise, projection, 8 apart */
    float *gate_f, *gate_t, *coef, *z, *w_exp, *w_dw, *w_proj;
} Prep;

/* Share id of n of `total` items, in whole groups of `unit`. */
static void slice(int total, int unit, int id, int n, int *lo, int *hi) {
    int groups = total / unit;
    *lo = groups * id / n * unit, *hi = groups * (id + 1) / n * unit;
}

static void prepare_share(const Prep *p, int id, int n) {
    const Block *b = p->b;
    int H = b->H, C = b->cexp, K = b->K, lo, hi;
    Epi e_f = {NULL, b->cf_b, ACT_NONE, NULL, 0, NULL, NULL, NULL}, e_t = {NULL, b->ct_b, ACT_NONE, NULL, 0, NULL, NULL, NULL};
    slice(b->Fo, 1, id, n, &lo, &hi);
    if (hi > lo) {
        gemm(p->pf + (size_t)lo * H, 1, hi - lo, 0, H, b->cf_w, 0, C, p->gate_f + (size_t)lo * C, 0, &e_f);
        sigmoid_inplace(p->gate_f + (size_t)lo * C, (size_t)(hi - lo) * C);
    }
    slice(b->To, 1, id, n, &lo, &hi);
    if (hi > lo) {
        gemm(p->pt + (size_t)lo * H, 1, hi - lo, 0, H, b->ct_w, 0, C, p->gate_t + (size_t)lo * C, 0, &e_t);
        sigmoid_inplace(p->gate_t + (size_t)lo * C, (size_t)(hi - lo) * C);
    }
    /* Dy-ReLU coefficients, stored as four planes of C: slope 1, slope 2, offset 1, offset 2.
       Row by row through dy_w (H x 4C, up to 2 MB): reading it column-wise ran at a third of the speed. */
    slice(4 * C, VL, id, n, &lo, &hi);
    if (hi > lo) {
        float *z = p->z;
        gemv(p->h, H, b->dy_w + lo, 4 * (size_t)C, hi - lo, b->dy_b + lo, ACT_NONE, z + lo);
        for (int o = lo; o < hi; o += VL) st(z + o, splat(2.f) * vsigmoid(ld(z + o)) - splat(1.f));
        for (int o = lo; o < hi; o++) p->coef[(o % 4) * C + o / 4] = z[o] * b->lambdas[o % 4] + b->init_v[o % 4];
    }
    TICK(0);
    /* This input's three kernels. BN's scale goes into the depthwise kernel; the expansion's and the
       projection's are applied by their GEMMs' epilogues (aggregate_packed). */
    if (b->has_exp) {
        slice(b->cin, 1, id, n, &lo, &hi);
        aggregate_packed(b->exp_w, p->att, K, lo, hi, b->cin, C, (size_t)b->cin * C, p->w_exp);
    }
    slice(b->k * b->k, 1, id, n, &lo, &hi);
    aggregate(b->dw_w + (size_t)lo * C, p->att + 8, K, hi - lo, C, (size_t)b->k * b->k * C, b->dw_scale, p->w_dw + (size_t)lo * C);
    slice(C, 1, id, n, &lo, &hi);
    aggregate_packed(b->proj_w, p->att + 16, K, lo, hi, C, b->cout, (size_t)C * b->cout, p->w_proj);
    TICK(1);
}

/* The weights a DyMN block reads before its rows can start, in the order it reads them; empty for mn
   blocks, whose static kernels are read by the rows themselves. */
static WeightStream weight_stream(const Block *b) {
    WeightStream s = {{NULL}, {0}, 0, 0};
    if (!b || b->kind != KIND_DYMN) return s;
    size_t C = b->cexp, K = b->K, H = b->H;
#define PART(ptr, floats) (s.base[s.n] = (const char *)(ptr), s.bytes[s.n] = sizeof(float) * (floats), s.total += s.bytes[s.n++])
    PART(b->joint_w, (size_t)b->cin * H);
    PART(b->cf_w, H * C);
    PART(b->ct_w, H * C);
    PART(b->dy_w, H * 4 * C);
    if (b->has_exp) PART(b->exp_w, K * b->cin * C);
    PART(b->dw_w, K * b->k * b->k * C);
    PART(b->proj_w, K * C * b->cout);
#undef PART
    return s;
}

/* Block b's context on one thread: pooled rows, the shared 1x1 conv, its mean h and the kernel
   attentions. The rest of the preparation (prep, for DyMN blocks; prep->b stays NULL for mn
   blocks, whose kernels are static) is prepare_share's, after which the rows can run. */
static RowJob block_prepare(const Block *b, const float *x, const float *sum_f, const float *sum_t, float *y,
                            float *y_sum_f, float *ctx, float *agg, Prep *prep) {
    int F = b->F, T = b->T, H = b->H, C = b->cexp, K = b->K;
    memset(y_sum_f, 0, sizeof(float) * b->Fo * b->cout);
    prep->b = NULL;
    if (b->kind == KIND_MN) { /* static kernels: nothing to compute per window before the rows */
        RowJob job = {b, x, y, y_sum_f, b->exp_w, b->dw_w, b->proj_w, NULL, NULL, NULL, NULL, 0, NULL};
        return job;
    }
    /* Context: means over time (F rows) and over frequency (T rows), one shared 1x1 conv + BN + Hardswish. */
    float *rows = ctx, *joint = rows + (size_t)(F + T) * b->cin, *pooled = joint + (size_t)(F + T) * H;
    float *gate_f = pooled + (size_t)(F + T) * H, *gate_t = gate_f + (size_t)b->Fo * C;
    float *coef = gate_t + (size_t)b->To * C, *h = coef + 4 * C, *att = h + H;
    for (int f = 0; f < F; f++) for (int c = 0; c < b->cin; c++) rows[f * b->cin + c] = sum_f[f * b->cin + c] / T;
    for (int t = 0; t < T; t++) for (int c = 0; c < b->cin; c++) rows[(F + t) * b->cin + c] = sum_t[t * b->cin + c] / F;
    Epi e_joint = {b->joint_scale, b->joint_shift, ACT_HSWISH, NULL, 0, NULL, NULL, NULL};
    gemm(rows, 1, F + T, 0, b->cin, b->joint_w, 0, H, joint, 0, &e_joint);
    mean_rows(joint, F + T, H, h);
    const float *pf = joint, *pt = joint + (size_t)F * H;
    if (b->stride > 1) {
        avgpool3(joint, F, H, b->stride, pooled, b->Fo);
        avgpool3(joint + (size_t)F * H, T, H, b->stride, pooled + (size_t)b->Fo * H, b->To);
        pf = pooled, pt = pooled + (size_t)b->Fo * H;
    }
    if (b->has_exp) softmax_attention(b->exp_att_w, b->exp_att_b, h, H, K, b->inv_temp, att);
    softmax_attention(b->dw_att_w, b->dw_att_b, h, H, K, b->inv_temp, att + 8);
    softmax_attention(b->proj_att_w, b->proj_att_b, h, H, K, b->inv_temp, att + 16);
    float *w_exp = agg, *w_dw = w_exp + (size_t)b->cin * C, *w_proj = w_dw + (size_t)b->k * b->k * C;
    *prep = (Prep){b, h, pf, pt, att, gate_f, gate_t, coef, att + 24, w_exp, w_dw, w_proj};
    RowJob job = {b, x, y, y_sum_f, w_exp, w_dw, w_proj, coef, gate_f, gate_t, NULL, 0, NULL};
    return job;
}

/* The 1x1 projection of one output row with BN shift, the residual and the next block's pooling
   sums (which only a DyMN block's context reads: mn blocks skip them). */
static void project_row(const RowJob *j, const float *dw_row, int fo, float *sum_t, Prefetch *pf) {
    const Block *b = j->b;
    int dymn = b->kind == KIND_DYMN; /* packed kernel, BN scale in the epilogue, pooling sums */
    Epi e = {dymn ? b->proj_scale : NULL, b->proj_shift, ACT_NONE, b->residual ? j->x + (size_t)fo * b->T * b->cout : NULL, 0,
             dymn ? j->y_sum_f + (size_t)fo * b->cout : NULL, dymn ? sum_t : NULL, pf};
    gemm(dw_row, 1, b->To, 0, b->cexp, j->w_proj, dymn, b->cout, j->y + (size_t)fo * b->To * b->cout, 0, &e);
}

/* Output rows [lo, hi) of a prepared block. The expansion rows a depthwise output row needs live in
   a ring of `span` padded rows (plus one row of zeros for the frequency padding), so expansion,
   depthwise and projection of a row happen while its data is still in L2. Each thread has its own
   ring, dw_row and time sums (sum_t, zeroed here); the frequency sums are per row, so threads
   write disjoint parts of y_sum_f. */
static void block_rows(const RowJob *j, int lo, int hi, float *ring, float *dw_row, float *sum_t, Prefetch *pf) {
    const Block *b = j->b;
    const float *x = j->x;
    int F = b->F, T = b->T, C = b->cexp;
    int pad = b->pad, Tp = T + 2 * pad, span = (b->k - 1) * b->dil + 1;
    size_t row_floats = (size_t)Tp * C;
    float *zero_row = ring + span * row_floats;
    memset(zero_row, 0, sizeof(float) * row_floats);
    for (int r = 0; r < span; r++) {
        memset(ring + r * row_floats, 0, sizeof(float) * pad * C);
        memset(ring + r * row_floats + (size_t)(T + pad) * C, 0, sizeof(float) * pad * C);
    }
    int dymn = b->kind == KIND_DYMN; /* packed kernel, BN scale in the epilogue */
    Epi e_exp = {dymn ? b->exp_scale : NULL, b->exp_shift, b->exp_act, NULL, 0, NULL, NULL, pf};
    int first = lo * b->stride - pad;
    int next = first > 0 ? first : 0; /* the next expansion row to compute */
    for (int fo = lo; fo < hi; fo++) {
        const float *in_rows[16];
        for (int i = 0; i < b->k; i++) {
            int r = fo * b->stride - pad + i * b->dil;
            if (r < 0 || r >= F) { in_rows[i] = zero_row; continue; }
            for (; next <= r; next++) {
                float *slot = ring + (size_t)(next % span) * row_floats + (size_t)pad * C;
                if (b->has_exp) gemm(x + (size_t)next * T * b->cin, 1, T, 0, b->cin, j->w_exp, dymn, C, slot, 0, &e_exp);
                else memcpy(slot, x + (size_t)next * T * C, sizeof(float) * T * C);
            }
            in_rows[i] = ring + (size_t)(r % span) * row_floats;
        }
        TICK(1);
        if (b->kind == KIND_MN) {
            float *out = b->has_se ? j->stash + (size_t)fo * b->To * C : dw_row;
            depthwise_mn(b, in_rows, j->w_dw, out);
            TICK(2);
            if (b->has_se) continue; /* projected once the SE scales are known */
        } else {
            depthwise(b, in_rows, j->w_dw, b->dw_shift, j->coef, j->gate_f, j->gate_t, dw_row, fo);
            TICK(2);
        }
        project_row(j, dw_row, fo, sum_t, pf);
        TICK(3);
    }
}

/* Phase 1 of an SE block: project the stashed depthwise rows [lo, hi) with the scaled kernel. */
static void block_project(const RowJob *j, int lo, int hi, float *sum_t) {
    for (int fo = lo; fo < hi; fo++) project_row(j, j->stash + (size_t)fo * j->b->To * j->b->cexp, fo, sum_t, NULL);
    TICK(3);
}

/* Output rows chunk c of n of a prepared block, its time sums into sum_t (zeroed here): the rows
   (phase 0), or the projection of the SE blocks' stashed rows (phase 1). */
static void rows_chunk(const RowJob *j, int c, int n, float *ring, float *dw_row, float *sum_t) {
    int lo, hi;
    slice(j->b->Fo, 1, c, n, &lo, &hi);
    memset(sum_t, 0, sizeof(float) * j->b->To * j->b->cout);
    Prefetch pf = prefetch_share(j->next, c, n);
    if (j->phase == 0) block_rows(j, lo, hi, ring, dw_row, sum_t, &pf);
    else block_project(j, lo, hi, sum_t);
}

/* Squeeze-excitation over channels (EfficientAT's mn blocks): s = sigmoid(fc2(relu(fc1(mean of the
   depthwise output)))). Scaling input channel c of the projection by s[c] equals scaling the
   activations, so the scaled kernel goes to `w` (cexp x cout) and the stash stays as it is. */
static void se_scale_projection(const Block *b, const float *stash, float *tmp, float *w) {
    int C = b->cexp, H = b->H, P = b->Fo * b->To;
    float *mean = tmp, *hid = tmp + C;
    mean_rows(stash, P, C, mean);
    gemv(mean, C, b->se1_w, H, H, b->se1_b, ACT_RELU, hid);
    gemv(hid, H, b->se2_w, C, C, b->se2_b, ACT_NONE, mean);
    sigmoid_inplace(mean, C);
    for (int c = 0; c < C; c++)
        for (int o = 0; o < b->cout; o += VL) st(w + (size_t)c * b->cout + o, splat(mean[c]) * ld(b->proj_w + (size_t)c * b->cout + o));
}

/* Waiting between threads spins, then yields. The waits are short (a helper waits while the main
   thread computes a block's context, tens of microseconds), and sleeping in the kernel cost more
   than that per wake-up on machine B's VM. After SPIN_LIMIT polls (about 6 us on machine B, 29 ns
   a poll) a waiter calls sched_yield between polls: on a free core that returns at once and the
   wait stays a spin; on an oversubscribed one it hands the core over. */
#define SPIN_LIMIT 200

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static inline void backoff(int *polls) {
    if ((*polls)++ < SPIN_LIMIT) cpu_relax();
    else sched_yield();
}

/* Helper threads. Per block the main thread computes the context alone; the rest of a DyMN
   block's preparation, and then its output rows, are each a task of `threads` chunks (contiguous
   row ranges, or slices of the preparation) that any thread of the team claims. The main thread
   claims too, and only waits for chunks that were claimed: a helper that is late (asleep, or
   sharing the main thread's core) leaves its chunk to the main thread instead of stalling the
   window. With a barrier per task instead, the window waited for the slowest helper. Machine B,
   2 threads, mn04_as: back to back 2.47 -> 2.46 ms (barriers -> claims), dymn04_edge 2.84 -> 2.67;
   after 50 ms idle before every 5 windows 4.48 -> 4.05 ms (1 thread: 3.73, so after idle the
   second vCPU still costs more than it brings there); both threads on one vCPU 5.76 -> 5.25
   (dymn04_edge, 1 thread 4.7).
   A team outlives the calls (dymn_team_new, kept by the caller's plan): helpers created per call
   often started on the main thread's core. Between calls the helpers sleep on a condition
   variable, so an idle stream costs no CPU. */
typedef struct Member { struct Team *team; int id; } Member;

typedef struct Team {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned generation;            /* bumped per call (under mu): helpers wake and serve the call */
    int quit;                       /* set by dymn_team_free */
    pid_t pid;                      /* the process whose threads these are: a fork's child has none of them */
    int threads;
    atomic_int in_call;             /* helpers poll for tasks while set, then sleep */
    _Atomic unsigned long long task; /* (sequence << 32) | (chunks << 16) | next chunk to claim */
    atomic_int chunks_done;
    unsigned seq;                   /* the current task's sequence number (main thread) */
    int preparing;                  /* the task is prep, not job's rows */
    RowJob job;
    Prep prep;
    float *ring[MAX_THREADS], *dw_row[MAX_THREADS]; /* per thread */
    float *sum_t[MAX_THREADS];      /* per chunk: the time sums of its rows, added in chunk order */
    pthread_t tids[MAX_THREADS];
    Member members[MAX_THREADS];
} Team;

/* Chunk c of n of the current task, on thread id's ring. The time sums are per chunk, whoever runs
   it, so the logits do not depend on which thread ran what. */
static void run_chunk(Team *t, int id, int c, int n) {
    if (t->preparing) prepare_share(&t->prep, c, n);
    else rows_chunk(&t->job, c, n, t->ring[id], t->dw_row[id], t->sum_t[c]);
}

/* Claims and runs chunks of the current task until none is left to claim. */
static void claim_chunks(Team *t, int id) {
    for (;;) {
        unsigned long long v = atomic_load_explicit(&t->task, memory_order_acquire);
        int n = (int)(v >> 16 & 0xffff), c = (int)(v & 0xffff);
        if (c >= n) return;
        if (!atomic_compare_exchange_weak_explicit(&t->task, &v, v + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        run_chunk(t, id, c, n);
        atomic_fetch_add_explicit(&t->chunks_done, 1, memory_order_release);
    }
}

static void *team_member(void *arg) {
    Team *t = ((Member *)arg)->team;
    int id = ((Member *)arg)->id;
    unsigned seen = 0;
    for (;;) {
        pthread_mutex_lock(&t->mu);
        while (t->generation == seen && !t->quit) pthread_cond_wait(&t->cv, &t->mu);
        seen = t->generation;
        int quit = t->quit;
        pthread_mutex_unlock(&t->mu);
        if (quit) return NULL;
        for (int polls = 0; atomic_load_explicit(&t->in_call, memory_order_acquire);) {
            unsigned long long v = atomic_load_explicit(&t->task, memory_order_acquire);
            if ((v & 0xffff) < (v >> 16 & 0xffff)) {
                claim_chunks(t, id);
                polls = 0;
            } else {
                backoff(&polls);
            }
        }
    }
}

/* A team of `threads` (2..MAX_THREADS) for dymn_forward; NULL if none could start. It may hold
   fewer threads than asked when thread creation fails. Free with dymn_team_free. One call at a
   time per team. */
Team *dymn_team_new(int threads) {
    if (threads < 2) return NULL;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    Team *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    atomic_init(&t->in_call, 0);
    atomic_init(&t->task, 0);
    atomic_init(&t->chunks_done, 0);
    int started = 0;
    for (int i = 1; i < threads; i++) {
        t->members[i].team = t, t->members[i].id = i;
        if (pthread_create(&t->tids[i], NULL, team_member, &t->members[i]) != 0) break;
        started++;
    }
    t->threads = started + 1;
    t->pid = getpid();
    if (started == 0) {
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        free(t);
        return NULL;
    }
    return t;
}

void dymn_team_free(Team *t) {
    if (!t) return;
    pthread_mutex_lock(&t->mu);
    t->quit = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    for (int i = 1; i < t->threads; i++) pthread_join(t->tids[i], NULL);
    pthread_cond_destroy(&t->cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

/* Publishes the current task (t->job or t->prep) in t->threads chunks, claims chunks itself, and
   returns once every chunk is done. chunks_done is reset only after the previous task's chunks
   have all been counted, so no late count can land in this task. */
static void team_run(Team *t) {
    int n = t->threads;
    atomic_store_explicit(&t->chunks_done, 0, memory_order_relaxed);
    t->seq++;
    atomic_store_explicit(&t->task, (unsigned long long)t->seq << 32 | (unsigned long long)n << 16, memory_order_release);
    claim_chunks(t, 0);
    for (int polls = 0; atomic_load_explicit(&t->chunks_done, memory_order_acquire) < n;) backoff(&polls);
}

/* input: (F, T) log-mel of one window; logits: (classes_padded). Returns 0. */
int dymn_forward(const Net *n, const float *input, float *logits) {
    Sizes s = sizes(n);
    float *act[2] = {n->work, n->work + s.act};
    float *ring = act[1] + s.act, *dw_row = ring + s.pad, *pool = dw_row + s.dw, *ctx = pool + s.pool, *agg = ctx + s.ctx;
    float *stash = agg + s.agg, *emb = stash + s.stash, *hidden = emb + n->c_head, *helpers = hidden + n->hidden + 64;
    int threads = n->threads < 1 ? 1 : n->threads > MAX_THREADS ? MAX_THREADS : n->threads;
    /* The caller's team if it fits the workspace (sized for n->threads) and its threads live in this
       process, else one for this call. One call at a time per team. */
    Team *team = NULL, *own = NULL;
    if (threads > 1)
        team = n->team && n->team->threads <= threads && n->team->pid == getpid() ? n->team : (own = dymn_team_new(threads));
    threads = team ? team->threads : 1;
    if (team) {
        team->ring[0] = ring, team->dw_row[0] = dw_row;
        for (int i = 1; i < threads; i++) {
            float *base = helpers + (size_t)(i - 1) * (s.pad + s.dw + s.rowsum);
            team->ring[i] = base, team->dw_row[i] = base + s.pad, team->sum_t[i] = base + s.pad + s.dw;
        }
        atomic_store_explicit(&team->in_call, 1, memory_order_relaxed);
        pthread_mutex_lock(&team->mu);
        team->generation++;
        pthread_cond_broadcast(&team->cv);
        pthread_mutex_unlock(&team->mu);
    }
#ifdef PROFILE
    prof_last = prof_now();
#endif
    PROF_BLOCK(30);
    /* Stem: 3x3, stride 2, padding 1, BN, Hardswish, with the first block's pooling sums. */
    int F = n->F, T = n->T, Fo = (F + 1) / 2, To = (T + 1) / 2, C0 = n->C0;
    float *x = act[0];
    float *sum_f = pool, *sum_t = pool + (size_t)Fo * C0;
    memset(pool, 0, sizeof(float) * (size_t)(Fo + To) * C0);
    for (int fo = 0; fo < Fo; fo++) {
        int i0 = fo == 0 ? 1 : 0, i1 = F - (fo * 2 - 1) < 3 ? F - (fo * 2 - 1) : 3;
        for (int c = 0; c < C0; c += VL) {
            v8 wv[9], row_sum = splat(0.f);
            for (int k = 0; k < 9; k++) wv[k] = ld(n->stem_w + k * C0 + c);
            v8 sc = ld(n->stem_scale + c), sh = ld(n->stem_shift + c);
            for (int to = 0; to < To; to++) {
                int j0 = to == 0 ? 1 : 0, j1 = T - (to * 2 - 1) < 3 ? T - (to * 2 - 1) : 3;
                const float *in = input + (ptrdiff_t)(fo * 2 - 1) * T + (to * 2 - 1);
                v8 acc = splat(0.f);
                if (i0 == 0 && j0 == 0 && i1 == 3 && j1 == 3) {
                    for (int ii = 0; ii < 3; ii++)
                        for (int jj = 0; jj < 3; jj++) acc += splat(in[ii * T + jj]) * wv[ii * 3 + jj];
                } else {
                    for (int ii = i0; ii < i1; ii++)
                        for (int jj = j0; jj < j1; jj++) acc += splat(in[ii * T + jj]) * wv[ii * 3 + jj];
                }
                v8 y = activate(acc * sc + sh, ACT_HSWISH);
                st(x + ((size_t)fo * To + to) * C0 + c, y);
                row_sum += y;
                st(sum_t + to * C0 + c, ld(sum_t + to * C0 + c) + y);
            }
            st(sum_f + fo * C0 + c, row_sum);
        }
    }
    TICK(0);
    for (int i = 0; i < n->n_blocks; i++) {
        const Block *b = &n->blocks[i];
        PROF_BLOCK(i);
        float *y = act[(i + 1) % 2];
        /* The block's output sums go after its input sums (which it reads first). */
        float *y_sum_f = pool + (size_t)(b->F + b->T) * b->cin, *y_sum_t = y_sum_f + (size_t)b->Fo * b->cout;
        Prep prep;
        RowJob job = block_prepare(b, x, sum_f, sum_t, y, y_sum_f, ctx, agg, &prep);
        job.stash = stash;
        WeightStream next = weight_stream(i + 1 < n->n_blocks ? &n->blocks[i + 1] : NULL);
        job.next = &next;
        if (prep.b && threads == 1) {
            prepare_share(&prep, 0, 1);
        } else if (prep.b) {
            team->prep = prep, team->preparing = 1;
            team_run(team);
            team->preparing = 0;
        }
        for (;;) {
            if (threads == 1) {
                rows_chunk(&job, 0, 1, ring, dw_row, y_sum_t);
            } else {
                team->job = job, team->sum_t[0] = y_sum_t;
                team_run(team);
                for (int k = 1; k < threads; k++)
                    for (size_t q = 0; q < (size_t)b->To * b->cout; q++) y_sum_t[q] += team->sum_t[k][q];
            }
            if (!(b->kind == KIND_MN && b->has_se) || job.phase == 1) break;
            se_scale_projection(b, stash, ctx, agg); /* between the passes, on this thread */
            job.w_proj = agg, job.phase = 1;
        }
        /* Move the output sums to the front for the next block. */
        memmove(pool, y_sum_f, sizeof(float) * (size_t)(b->Fo + b->To) * b->cout);
        sum_f = pool, sum_t = pool + (size_t)b->Fo * b->cout;
        x = y;
    }
    /* Head: 1x1 conv + BN + Hardswish, mean over positions, MLP. */
    const Block *last = &n->blocks[n->n_blocks - 1];
    int P = last->Fo * last->To, CH = n->c_head;
    float *y = act[(n->n_blocks + 1) % 2]; /* x is act[n_blocks % 2] */
    float *col_f = pool, *col_t = pool + (size_t)last->Fo * CH;
    memset(pool, 0, sizeof(float) * (size_t)(last->Fo + last->To) * CH);
    Epi e = {n->outc_scale, n->outc_shift, ACT_HSWISH, NULL, 0, col_f, col_t, NULL};
    gemm(x, last->Fo, last->To, last->To * n->c_last, n->c_last, n->outc_w, 0, CH, y, last->To * CH, &e);
    for (int c = 0; c < CH; c++) {
        float s = 0.f;
        for (int f = 0; f < last->Fo; f++) s += col_f[f * CH + c];
        emb[c] = s / P;
    }
    gemv(emb, CH, n->fc1_w, n->hidden, n->hidden, n->fc1_b, ACT_HSWISH, hidden);
    gemv(hidden, n->hidden, n->fc2_w, n->classes_padded, n->classes_padded, n->fc2_b, ACT_NONE, logits);
    PROF_BLOCK(31);
    TICK(0);
    if (team) { /* end the call: the helpers go back to sleep */
        atomic_store_explicit(&team->in_call, 0, memory_order_release);
        dymn_team_free(own);
    }
    return 0;
}

#ifdef DYMN_PYMODULE
/* setuptools builds this file as an extension module; an empty importable module keeps tools that
   walk the package (pkgutil, pytest) from tripping over it. Python loads the kernels with ctypes. */
#include <Python.h>
#define DYMN_STR2(x) #x
#define DYMN_STR(x) DYMN_STR2(x)
#define DYMN_INIT2(name) PyInit_##name
#define DYMN_INIT(name) DYMN_INIT2(name)
static struct PyModuleDef dymn_module = {PyModuleDef_HEAD_INIT, DYMN_STR(DYMN_PYMODULE),
                                         "Fused DyMN kernels; runtime/backends/fused.py loads them with ctypes.", -1, NULL};
PyMODINIT_FUNC DYMN_INIT(DYMN_PYMODULE)(void) { return PyModule_Create(&dymn_module); }
#endif
