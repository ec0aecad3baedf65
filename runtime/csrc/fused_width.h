/* The code that runs at either vector width: one column of the GEMM tile's epilogue, and one
   channel group of the depthwise convolution. fused_dymn.c includes this file once per type it
   uses: 8 floats everywhere, and 16 floats in the AVX-512 build (for all but the last 8 channels
   where a count is an odd number of 8s). A template by inclusion, because C has no other way to
   write the same loops for two vector types. The includer defines:
     DV              the vector type;
     DV_LD(p)        an unaligned load, DV_ST(p, v) a store, DV_SPLAT(x) a broadcast;
     DV_MUL(a, b)    a product that is rounded on its own (never fused into an FMA);
     DV_MAX(a, b)    lane-wise max, DV_ACT(v, act) the activation (ReLU or Hardswish),
     DV_HSWISH_TILE  Hardswish with its constants loaded where used (hswish_in_tile);
     DV_NAME(n)      n with the type's suffix.
   It undefines them at its end, ready for the next instantiation.
   Every output gets the same operations in the same order in each instantiation, so the two widths
   give bit-identical results. */

/* The epilogue of one tile column: rows 0..R-1 of output channels c .. c + lanes - 1, whose
   accumulated sums are acc[r]. */
static inline __attribute__((always_inline)) void DV_NAME(epilogue_column)(
    const DV *acc, int R, int cout, int c, float *out, const Epi *e, Mode m, int f, int t0, const float *res) {
    /* Locals, not e->...: DV_ST is a memcpy, which may alias anything, so fields read through e
       would be reloaded after every store. */
    const float *scale = e->scale, *shift = e->shift;
    float *pool_f = e->pool_f, *pool_t = e->pool_t;
    DV sc = m.scale ? DV_LD(scale + c) : DV_SPLAT(1.f), sh = DV_LD(shift + c);
    DV sum_f = m.pool ? DV_LD(pool_f + f * cout + c) : DV_SPLAT(0.f), pair = DV_SPLAT(0.f);
#pragma GCC unroll 12
    for (int r = 0; r < R; r++) {
        /* acc * 1 + shift rather than acc + shift: the same speed, and the rounding of the code
           before this epilogue was specialised. Compiled as acc + shift, the seeded dymn04's
           real-audio row moved from 9.2e-5 to 1.1e-4 off EfficientAT, over the 1e-4 allowed. */
        DV y = m.scale ? DV_MUL(acc[r], sc) + sh : acc[r] * sc + sh;
        y = m.act == ACT_HSWISH ? DV_HSWISH_TILE(y) : DV_ACT(y, m.act);
        if (m.res) y += DV_LD(res + r * cout + c);
        DV_ST(out + r * cout + c, y);
        if (m.pool) {
            if (r % 2 == 0) pair = y;
            else sum_f += pair + y;
            float *pt = pool_t + (t0 + r) * cout + c;
            DV_ST(pt, DV_LD(pt) + y);
        }
    }
    if (m.pool && R % 2) sum_f += pair;
    /* One store of the frequency sum per tile: per row, its load-add-store chain stalled the GEMM.
       It adds the rows in pairs (t, t + 1), t even, in order, whatever the tile's height (tiles
       start at even t): every build then sums alike, and the AVX2 and AVX-512 builds give the
       same logits, bit for bit. */
    if (m.pool) DV_ST(pool_f + f * cout + c, sum_f);
}

/* Bias plus the k x k taps of output `to`, channel group c: the last few columns of every row. */
static inline DV DV_NAME(dw_one)(const float *const *in_rows, const float *w, const float *bias, int C, int to, int c, int KS, int S, int d) {
    DV acc = DV_LD(bias + c);
    for (int i = 0; i < KS; i++)
        for (int j = 0; j < KS; j++) acc += DV_LD(in_rows[i] + ((size_t)to * S + (size_t)j * d) * C + c) * DV_LD(w + (i * KS + j) * C + c);
    return acc;
}

/* Bias plus the k x k taps of four neighbouring outputs (to .. to+3) of channel group c.
   Four outputs at a time, every channel group before the next four: the input rows are read from
   L2 once, and the k*k weights of a group come from L1. With REUSE (stride 1, no dilation) the four
   outputs share KS + 3 input columns, each loaded once per kernel row and used by every tap that
   reads it (3.5 % on dymn04_edge: the loop goes from load-bound to FMA-bound). KS, S and REUSE are
   constants at each call site, so the tap loops unroll. */
static inline __attribute__((always_inline)) void DV_NAME(dw_four)(const float *const *in_rows, const float *w, DV bi, int C, int to,
                                                                  int c, int KS, int S, int d, int REUSE, DV acc[4]) {
    ptrdiff_t SC = (ptrdiff_t)S * C, dC = (ptrdiff_t)d * C;
    for (int q = 0; q < 4; q++) acc[q] = bi;
    if (REUSE) {
        for (int i = 0; i < KS; i++) {
            const float *row = in_rows[i] + (size_t)to * C + c;
            DV col[8];
            for (int m = 0; m < KS + 3; m++) col[m] = DV_LD(row + (size_t)m * C);
            for (int j = 0; j < KS; j++) {
                DV wij = DV_LD(w + (i * KS + j) * C + c);
                for (int q = 0; q < 4; q++) acc[q] += col[q + j] * wij;
            }
        }
        return;
    }
    const float *wp = w + c;
    for (int i = 0; i < KS; i++) {
        /* Pointers stepped tap by tap: with all k*k offsets precomputed, GCC spilled them to the stack. */
        const float *tap = in_rows[i] + (size_t)to * SC + c;
        for (int j = 0; j < KS; j++, tap += dC, wp += C) {
            DV wij = DV_LD(wp);
            for (int q = 0; q < 4; q++) acc[q] += DV_LD(tap + q * SC) * wij;
        }
    }
}

/* DyMN: outputs to .. to+3 of channel group c with Dy-ReLU (max of two per-channel lines) and
   coordinate attention (times gate_f[f][c] * gate_t[t][c]). The coefficients are loaded once
   before the stores: DV_ST may alias them, so loads after a store would be repeated. */
static inline __attribute__((always_inline)) void DV_NAME(dw_group_four)(
    const float *const *in_rows, const float *w, const float *bias, const float *coef, const float *gf_row,
    const float *gate_t, float *o, int C, int to, int c, int KS, int S, int d, int REUSE) {
    DV acc[4];
    DV_NAME(dw_four)(in_rows, w, DV_LD(bias + c), C, to, c, KS, S, d, REUSE, acc);
    DV a1 = DV_LD(coef + c), a2 = DV_LD(coef + C + c), b1 = DV_LD(coef + 2 * C + c), b2 = DV_LD(coef + 3 * C + c);
    DV gf = DV_LD(gf_row + c);
    for (int q = 0; q < 4; q++) {
        DV y = DV_MAX(acc[q] * a1 + b1, acc[q] * a2 + b2);
        DV_ST(o + (size_t)(to + q) * C + c, y * gf * DV_LD(gate_t + (to + q) * C + c));
    }
}

/* DyMN: output `to` of channel group c, one at a time (the row's last few). */
static inline void DV_NAME(dw_group_one)(const float *const *in_rows, const float *w, const float *bias, const float *coef,
                                         const float *gf_row, const float *gate_t, float *o, int C, int to, int c, int KS, int S, int d) {
    DV acc = DV_NAME(dw_one)(in_rows, w, bias, C, to, c, KS, S, d);
    DV y = DV_MAX(acc * DV_LD(coef + c) + DV_LD(coef + 2 * C + c), acc * DV_LD(coef + C + c) + DV_LD(coef + 3 * C + c));
    DV_ST(o + (size_t)to * C + c, y * DV_LD(gf_row + c) * DV_LD(gate_t + to * C + c));
}

/* MobileNetV3: outputs to .. to+3 of channel group c with the block's activation; no gates. */
static inline __attribute__((always_inline)) void DV_NAME(dw_group_four_mn)(const float *const *in_rows, const float *w, const float *bias,
                                                                           float *o, int C, int to, int c, int KS, int S, int d, int REUSE,
                                                                           int act) {
    DV acc[4];
    DV_NAME(dw_four)(in_rows, w, DV_LD(bias + c), C, to, c, KS, S, d, REUSE, acc);
    for (int q = 0; q < 4; q++) DV_ST(o + (size_t)(to + q) * C + c, DV_ACT(acc[q], act));
}

/* MobileNetV3: output `to` of channel group c, one at a time (the row's last few). */
static inline void DV_NAME(dw_group_one_mn)(const float *const *in_rows, const float *w, const float *bias, float *o, int C, int to,
                                            int c, int KS, int S, int d, int act) {
    DV_ST(o + (size_t)to * C + c, DV_ACT(DV_NAME(dw_one)(in_rows, w, bias, C, to, c, KS, S, d), act));
}

#undef DV
#undef DV_LD
#undef DV_ST
#undef DV_MAX
#undef DV_ACT
#undef DV_NAME
#undef DV_SPLAT
#undef DV_MUL
#undef DV_HSWISH_TILE
