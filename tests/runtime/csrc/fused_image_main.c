/* Runs fused_dymn.c on a "plan image" that tests/runtime/test_fused_aarch64.py writes on the host:
   the Net and Block structs with every pointer stored as (offset into the weight blob) + 1, the
   weights, and the input windows. Linked statically for aarch64 and run under qemu-aarch64, it checks
   the generic build (8-float vectors as NEON register pairs) where no Python or numpy for that
   architecture is at hand. Struct layouts match between x86-64 and aarch64 (both LP64).

   usage: fused_image IMAGE LOGITS_OUT   (writes n_inputs x classes_padded float32) */

#include "../../../runtime/csrc/fused_dymn.c"

#include <stdint.h>
#include <stdio.h>

typedef struct { char magic[8]; uint64_t n_blocks, blob_bytes, n_inputs, net_bytes, block_bytes; } Header;

static void fix(const float **p, const float *blob) { *p = *p ? blob + ((uintptr_t)*p - 1) / sizeof(float) : NULL; }

static int fail(const char *what) { fprintf(stderr, "fused_image: %s\n", what); return 2; }

int main(int argc, char **argv) {
    if (argc != 3) return fail("usage: fused_image IMAGE LOGITS_OUT");
    FILE *f = fopen(argv[1], "rb");
    if (!f) return fail("cannot open the image");
    Header h;
    if (fread(&h, sizeof h, 1, f) != 1 || memcmp(h.magic, "DYMNIMG1", 8)) return fail("not a plan image");
    if (h.net_bytes != sizeof(Net) || h.block_bytes != sizeof(Block)) return fail("struct sizes differ from this build's");
    Net net;
    Block *blocks = malloc(sizeof(Block) * h.n_blocks);
    float *blob = aligned_alloc(64, (h.blob_bytes + 63) / 64 * 64);
    if (fread(&net, sizeof net, 1, f) != 1 || fread(blocks, sizeof(Block), h.n_blocks, f) != h.n_blocks
        || fread(blob, 1, h.blob_bytes, f) != h.blob_bytes) return fail("truncated image");
    /* Every pointer field of Block follows exp_w; of Net, the float pointers around `blocks`. */
    for (uint64_t i = 0; i < h.n_blocks; i++) {
        const float **p = &blocks[i].exp_w, **end = (const float **)((char *)&blocks[i] + sizeof(Block));
        for (; p < end; p++) fix(p, blob);
    }
    fix(&net.stem_w, blob), fix(&net.stem_scale, blob), fix(&net.stem_shift, blob);
    for (const float **p = &net.outc_w; p <= &net.fc2_b; p++) fix(p, blob);
    net.blocks = blocks;
    size_t frames = (size_t)net.F * net.T;
    float *input = malloc(sizeof(float) * frames), *logits = malloc(sizeof(float) * net.classes_padded);
    net.work = aligned_alloc(64, (dymn_workspace_floats(&net) * sizeof(float) + 63) / 64 * 64);
    memset(net.work, 0, dymn_workspace_floats(&net) * sizeof(float));
    net.team = dymn_team_new(net.threads); /* as the Python plan does: one team for every window */
    if (net.threads > 1 && !net.team) return fail("no helper thread started");
    FILE *out = fopen(argv[2], "wb");
    if (!out) return fail("cannot write the logits");
    for (uint64_t n = 0; n < h.n_inputs; n++) {
        if (fread(input, sizeof(float), frames, f) != frames) return fail("truncated inputs");
        dymn_forward(&net, input, logits);
        fwrite(logits, sizeof(float), net.classes_padded, out);
    }
    dymn_team_free(net.team);
    fclose(out);
    fclose(f);
    return 0;
}
