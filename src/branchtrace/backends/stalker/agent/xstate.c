/*
 * branchtrace Stalker recorder: keeping the AVX-512 state whole across Stalker's own code
 * (docs/stalker.md, "AVX-512 state").
 *
 * Stalker enters its C code through a shared prolog helper and leaves it through an
 * epilog helper, both emitted once per thread context into its code slab. With AVX-512
 * (frida-gum 17.16 to 17.26 at least) the epilog restores k0-k7, zmm16-31, bits 256-511
 * of zmm0-15 (EVEX vinserti64x4), and then bits 128-255 of ymm0-15 with VEX-encoded
 * `vinserti128 ymmN, ymmN, [rsp+16N], 1`, and a VEX instruction that writes a ymm
 * register zeroes bits 256-511 of it: what the step before restored is lost at every
 * return from Stalker's C code (each new block, each slow lookup).
 *
 * The fix rewrites those 16 VEX instructions in place, before the helper first runs,
 * with their EVEX.512 equivalents `vinserti32x4 zmmN, zmmN, [rsp+16N], 1`: the same 128
 * bits from the same slots into the same lane, and an instruction whose destination is
 * the whole zmm register leaves the other lanes as they are. 143 bytes where there were
 * 151; an 8-byte nop fills the rest. The stack layout and every other byte stay.
 *
 * Finding the helpers: every transform call gets the iterator, whose first field is the
 * thread's GumExecCtx; that context holds the addresses of its last emitted epilog
 * helpers (minimal and full). Their offsets in the context are learned once, from the
 * first context seen, by looking for the two words that point to code of exactly this
 * shape; after that each transform call reads two words and one byte of each helper,
 * and patches a helper the first time it sees it (Stalker emits new ones when a new code
 * slab is out of their reach, before it compiles a block into that slab).
 */

typedef struct
{
  guint32 avx512;         /* set by the agent: the CPU has AVX-512 (Frida emits the
                           * zmm restores), so the epilogs need the fix */
  guint32 learned;        /* 1: the offsets below are known; 2: the first context had no
                           * helpers of the expected shape (another Frida): nothing done */
  guint32 off[2];         /* offsets in GumExecCtx of last_epilog_minimal / _full */
  guint32 site[2];        /* offsets of the VEX restores in those helpers */
  guint32 patched;        /* helpers patched */
  guint32 failed;         /* helpers found that could not be patched */
  guint8 * bad[2];        /* the last helper that could not be, not looked at again */
} BtXstate;

extern BtXstate bt_xstate;

/* Frida's bytes: vinserti128 ymm0..ymm15, ymm0..ymm15, [rsp+0x0]..[rsp+0xf0], 1 */
static const guint8 bt_vex_restore[151] = {
  0xc4, 0xe3, 0x7d, 0x38, 0x04, 0x24, 0x01,
  0xc4, 0xe3, 0x75, 0x38, 0x4c, 0x24, 0x10, 0x01,
  0xc4, 0xe3, 0x6d, 0x38, 0x54, 0x24, 0x20, 0x01,
  0xc4, 0xe3, 0x65, 0x38, 0x5c, 0x24, 0x30, 0x01,
  0xc4, 0xe3, 0x5d, 0x38, 0x64, 0x24, 0x40, 0x01,
  0xc4, 0xe3, 0x55, 0x38, 0x6c, 0x24, 0x50, 0x01,
  0xc4, 0xe3, 0x4d, 0x38, 0x74, 0x24, 0x60, 0x01,
  0xc4, 0xe3, 0x45, 0x38, 0x7c, 0x24, 0x70, 0x01,
  0xc4, 0x63, 0x3d, 0x38, 0x84, 0x24, 0x80, 0x00, 0x00, 0x00, 0x01,
  0xc4, 0x63, 0x35, 0x38, 0x8c, 0x24, 0x90, 0x00, 0x00, 0x00, 0x01,
  0xc4, 0x63, 0x2d, 0x38, 0x94, 0x24, 0xa0, 0x00, 0x00, 0x00, 0x01,
  0xc4, 0x63, 0x25, 0x38, 0x9c, 0x24, 0xb0, 0x00, 0x00, 0x00, 0x01,
  0xc4, 0x63, 0x1d, 0x38, 0xa4, 0x24, 0xc0, 0x00, 0x00, 0x00, 0x01,
  0xc4, 0x63, 0x15, 0x38, 0xac, 0x24, 0xd0, 0x00, 0x00, 0x00, 0x01,
  0xc4, 0x63, 0x0d, 0x38, 0xb4, 0x24, 0xe0, 0x00, 0x00, 0x00, 0x01,
  0xc4, 0x63, 0x05, 0x38, 0xbc, 0x24, 0xf0, 0x00, 0x00, 0x00, 0x01,
};

/* the instruction before them: add rsp, 0x200 (the end of the zmm0-15 upper restores,
 * present only when Frida emitted the AVX-512 part) */
static const guint8 bt_vex_before[7] = { 0x48, 0x81, 0xc4, 0x00, 0x02, 0x00, 0x00 };

/* Ours (as GNU as encodes them): vinserti32x4 zmm0..zmm15, zmm0..zmm15,
 * [rsp+0x0]..[rsp+0xf0], 1 (disp8 scaled by 16), then nop dword [rax+rax+0] */
static const guint8 bt_evex_restore[151] = {
  0x62, 0xf3, 0x7d, 0x48, 0x38, 0x04, 0x24, 0x01,
  0x62, 0xf3, 0x75, 0x48, 0x38, 0x4c, 0x24, 0x01, 0x01,
  0x62, 0xf3, 0x6d, 0x48, 0x38, 0x54, 0x24, 0x02, 0x01,
  0x62, 0xf3, 0x65, 0x48, 0x38, 0x5c, 0x24, 0x03, 0x01,
  0x62, 0xf3, 0x5d, 0x48, 0x38, 0x64, 0x24, 0x04, 0x01,
  0x62, 0xf3, 0x55, 0x48, 0x38, 0x6c, 0x24, 0x05, 0x01,
  0x62, 0xf3, 0x4d, 0x48, 0x38, 0x74, 0x24, 0x06, 0x01,
  0x62, 0xf3, 0x45, 0x48, 0x38, 0x7c, 0x24, 0x07, 0x01,
  0x62, 0x73, 0x3d, 0x48, 0x38, 0x44, 0x24, 0x08, 0x01,
  0x62, 0x73, 0x35, 0x48, 0x38, 0x4c, 0x24, 0x09, 0x01,
  0x62, 0x73, 0x2d, 0x48, 0x38, 0x54, 0x24, 0x0a, 0x01,
  0x62, 0x73, 0x25, 0x48, 0x38, 0x5c, 0x24, 0x0b, 0x01,
  0x62, 0x73, 0x1d, 0x48, 0x38, 0x64, 0x24, 0x0c, 0x01,
  0x62, 0x73, 0x15, 0x48, 0x38, 0x6c, 0x24, 0x0d, 0x01,
  0x62, 0x73, 0x0d, 0x48, 0x38, 0x74, 0x24, 0x0e, 0x01,
  0x62, 0x73, 0x05, 0x48, 0x38, 0x7c, 0x24, 0x0f, 0x01,
  0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00,
};

#include <gum/gummemory.h>

#define BT_XS_CTX_WORDS 512     /* GumExecCtx is looked for in its first 4 KiB */
#define BT_XS_NEAR 65536        /* the first helpers are this close to the context: at the
                                 * start of its initial code slab, after its header page(s)
                                 * and thunk page; the context's memory is ~300 KiB, so
                                 * what is looked at there is mapped */
#define BT_XS_REACH 1024        /* the restores are within this many bytes of the start */

static gboolean
bt_xs_same (const guint8 * a, const guint8 * b, guint n)
{
  guint i;

  for (i = 0; i != n; i++)
    if (a[i] != b[i])
      return FALSE;
  return TRUE;
}

/* Where Frida's VEX restores are in the epilog helper at `helper` (0: not this shape).
 * The helper begins `pop rax; mov [rbx+disp], rax`. */
static guint32
bt_xs_find_site (const guint8 * helper)
{
  guint32 i;

  if (helper[0] != 0x58 || helper[1] != 0x48 || helper[2] != 0x89)
    return 0;
  for (i = 3 + sizeof (bt_vex_before); i + sizeof (bt_vex_restore) <= BT_XS_REACH; i++)
    if (helper[i] == 0xc4 && bt_xs_same (helper + i, bt_vex_restore, sizeof (bt_vex_restore)))
      return bt_xs_same (helper + i - sizeof (bt_vex_before), bt_vex_before,
                         sizeof (bt_vex_before)) ? i : 0;
  return 0;
}

/* The two epilog helpers: the words of the context that point into its own memory, at
 * code of that shape, in the order of the context's fields (minimal, then full). */
static void
bt_xs_learn (const guint8 * ctx)
{
  const guint64 * w = (const guint64 *) ctx;
  guint32 off[2], site[2];
  guint i, n = 0;

  for (i = 0; i != BT_XS_CTX_WORDS && n != 2; i++)
  {
    const guint8 * p = (const guint8 *) GSIZE_TO_POINTER (w[i]);
    guint32 s;

    if (p <= ctx || p >= ctx + BT_XS_NEAR)
      continue;
    s = bt_xs_find_site (p);
    if (s == 0)
      continue;
    off[n] = 8 * i;
    site[n] = s;
    n++;
  }
  if (n != 2)
    return;
  bt_xstate.off[0] = off[0];
  bt_xstate.off[1] = off[1];
  bt_xstate.site[0] = site[0];
  bt_xstate.site[1] = site[1];
  bt_xstate.learned = 1;
}

static void
bt_xs_apply (gpointer mem, gpointer user_data)
{
  guint8 * dst = mem;
  guint i;

  for (i = 0; i != sizeof (bt_evex_restore); i++)
    dst[i] = bt_evex_restore[i];
}

static void
bt_xs_fix (guint8 * helper, guint k)
{
  guint8 * site;

  if (helper == NULL || helper == bt_xstate.bad[k])
    return;
  site = helper + bt_xstate.site[k];
  if (site[0] == bt_evex_restore[0])
    return;                                 /* patched already: the usual case */
  if (bt_xs_same (site, bt_vex_restore, sizeof (bt_vex_restore)) &&
      bt_xs_same (site - sizeof (bt_vex_before), bt_vex_before, sizeof (bt_vex_before)) &&
      gum_memory_patch_code (site, sizeof (bt_evex_restore), bt_xs_apply, NULL))
  {
    g_atomic_int_add (&bt_xstate.patched, 1);
    return;
  }
  bt_xstate.bad[k] = helper;
  g_atomic_int_add (&bt_xstate.failed, 1);
}

/* Called at the start of every transform, in the thread whose block is compiled (or,
 * for a thread followed from another, while it is suspended): before any code of the
 * block runs, so before the context's helpers first run. */
static void
bt_xstate_check (GumStalkerIterator * iterator)
{
  guint8 * ctx;

  if (!bt_xstate.avx512)
    return;
  ctx = *(guint8 **) iterator;
  if (bt_xstate.learned == 0)
  {
    bt_xs_learn (ctx);
    if (bt_xstate.learned != 1)
    {
      bt_xstate.learned = 2;
      g_atomic_int_add (&bt_xstate.failed, 1);
    }
  }
  if (bt_xstate.learned != 1)
    return;
  bt_xs_fix (*(guint8 **) (ctx + bt_xstate.off[0]), 0);
  bt_xs_fix (*(guint8 **) (ctx + bt_xstate.off[1]), 1);
}
