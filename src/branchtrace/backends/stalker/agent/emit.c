/*
 * branchtrace Stalker recorder, part 2 of 4: the machine code each block starts with
 * (docs/stalker.md, "The emitted code"), the stream mode's slow path, and the set-up
 * of a thread's context.
 */

/* ------------------------------------------------------------------------------------ */
/* A tiny byte emitter: the sequences are short and fixed, raw bytes keep them exact.    */

typedef struct
{
  guint8 b[320];
  guint n;
  gboolean bad;
  guint lo, hi, jend;   /* a block-start sequence: [lo, hi) reads and writes the cursor and
                         * `written` (a handler must not append meanwhile); jend: the end of
                         * its `jmp body` (what follows are the pend and slow paths) */
} BtCode;

static void e1 (BtCode * c, guint8 v) { c->b[c->n++] = v; }
static void e4 (BtCode * c, guint32 v)
{
  e1 (c, v & 0xff); e1 (c, (v >> 8) & 0xff); e1 (c, (v >> 16) & 0xff); e1 (c, v >> 24);
}
static void e8 (BtCode * c, guint64 v) { e4 (c, (guint32) v); e4 (c, (guint32) (v >> 32)); }
static void en (BtCode * c, const guint8 * bytes, guint n)
{
  guint i;
  for (i = 0; i != n; i++)
    e1 (c, bytes[i]);
}

/* registers in ModRM encoding */
#define RAX 0
#define RCX 1
#define RDX 2

#define OFF_SAVE_RAX 0
#define OFF_SAVE_RCX 8
#define OFF_SAVE_RDX 16
#define OFF_CURSOR 24
#define OFF_CHUNK_END 32
#define OFF_SLOW 40
#define OFF_NOPEND 112
#define OFF_FLUSH 120
#define OFF_RETCACHE 280
#define OFF_SAVE_FLAGS 288
#define OFF_WANT 296
#define OFF_SAVE_TARGET 312

/* mov [T], rax (moffs64: needs no register); mov rax, T; save rcx (and rdx); then
 * `mov rcx, [rax+nopend]; jrcxz pend`: records a signal handler left are appended
 * first. Returns where the jrcxz displacement goes (patched by emit_pend). */
static guint
emit_enter (BtCode * c, guint64 T, gboolean save_rdx, guint * back)
{
  guint pos;

  e1 (c, 0x48); e1 (c, 0xa3); e8 (c, T);
  e1 (c, 0x48); e1 (c, 0xb8); e8 (c, T);
  en (c, (const guint8 []) { 0x48, 0x89, 0x48, OFF_SAVE_RCX }, 4);
  if (save_rdx)
    en (c, (const guint8 []) { 0x48, 0x89, 0x50, OFF_SAVE_RDX }, 4);
  en (c, (const guint8 []) { 0x48, 0x8b, 0x48, OFF_NOPEND }, 4);   /* mov rcx, [rax+nopend] */
  e1 (c, 0xe3); pos = c->n; e1 (c, 0);                             /* jrcxz pend */
  *back = c->n;
  return pos;
}

/* jmp back to `target` (already emitted) */
static void
emit_jmp_back (BtCode * c, guint target)
{
  gint32 rel = (gint32) target - (gint32) (c->n + 2);
  if (rel >= -128)
  {
    e1 (c, 0xeb); e1 (c, (guint8) (gint8) rel);
  }
  else
  {
    e1 (c, 0xe9); e4 (c, (guint32) ((gint32) target - (gint32) (c->n + 4)));
  }
}

/* patch a forward rel8 at `pos` to land here */
static void
patch_here (BtCode * c, guint pos)
{
  guint rel = c->n - (pos + 1);
  if (rel >= 128)
    c->bad = TRUE;                      /* never with these sequences; refuse, not misjump */
  c->b[pos] = (guint8) rel;
}

/* patch a forward rel32 at `pos` to land here */
static void
patch_here32 (BtCode * c, guint pos)
{
  guint32 rel = c->n - (pos + 4);
  c->b[pos] = rel & 0xff;
  c->b[pos + 1] = (rel >> 8) & 0xff;
  c->b[pos + 2] = (rel >> 16) & 0xff;
  c->b[pos + 3] = rel >> 24;
}

/* A call into C on the thread's stack, below the red zone, with every register the
 * emitted code did not save pushed, rdi = T; `fn` is the offset of the pointer in T. */
static void emit_call_out_args (BtCode * c, guint64 T, guint8 fn, gboolean args, guint32 id);

static void
emit_call_out (BtCode * c, guint64 T, guint8 fn)
{
  emit_call_out_args (c, T, fn, FALSE, 0);
}

/* The same; with `args`, also esi = `id` and rdx = the start of this code (offset 0 of
 * `c`: the block's entry), for bt_flush_pending. */
static void
emit_call_out_args (BtCode * c, guint64 T, guint8 fn, gboolean args, guint32 id)
{
  en (c, (const guint8 []) { 0x48, 0x8d, 0x64, 0x24, 0x80 }, 5);     /* lea rsp, [rsp-128] */
  e1 (c, 0x9c);                                                       /* pushfq */
  en (c, (const guint8 []) { 0x52, 0x56, 0x57, 0x41, 0x50, 0x41, 0x51, 0x41, 0x52, 0x41,
      0x53, 0x53 }, 12);                            /* push rdx rsi rdi r8 r9 r10 r11 rbx */
  en (c, (const guint8 []) { 0x48, 0x89, 0xc7 }, 3);                 /* mov rdi, rax */
  en (c, (const guint8 []) { 0x48, 0x89, 0xe3 }, 3);                 /* mov rbx, rsp */
  en (c, (const guint8 []) { 0x48, 0x83, 0xe4, 0xf0 }, 4);           /* and rsp, -16 */
  if (args)
  {
    e1 (c, 0xbe); e4 (c, id);                                         /* mov esi, id */
    en (c, (const guint8 []) { 0x48, 0x8d, 0x15 }, 3);               /* lea rdx, [rip-n] */
    e4 (c, (guint32) -(gint32) (c->n + 4));
  }
  en (c, (const guint8 []) { 0xff, 0x50, fn }, 3);                   /* call [rax+fn] */
  en (c, (const guint8 []) { 0x48, 0x89, 0xdc }, 3);                 /* mov rsp, rbx */
  en (c, (const guint8 []) { 0x5b, 0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, 0x5f,
      0x5e, 0x5a }, 12);                            /* pop rbx r11 r10 r9 r8 rdi rsi rdx */
  e1 (c, 0x9d);                                                       /* popfq */
  en (c, (const guint8 []) { 0x48, 0x8d, 0xa4, 0x24, 0x80, 0, 0, 0 }, 8); /* lea rsp,[rsp+128] */
  e1 (c, 0x48); e1 (c, 0xb8); e8 (c, T);                            /* mov rax, T */
}

/* pend: flush what a signal handler left, then go on where the check was */
static void
emit_pend (BtCode * c, guint64 T, guint pos, guint back, guint32 id)
{
  patch_here (c, pos);
  emit_call_out_args (c, T, OFF_FLUSH, TRUE, id);
  emit_jmp_back (c, back);
}

/* written += 1 through `reg`: mov reg, [rax+W]; lea reg, [reg+1]; mov [rax+W], reg */
static void
emit_publish (BtCode * c, gint32 w, guint reg)
{
  guint8 modrm_mem = 0x80 | (reg << 3);          /* [rax+disp32] */
  guint8 modrm_lea = 0x40 | (reg << 3) | reg;    /* [reg+disp8] */
  e1 (c, 0x48); e1 (c, 0x8b); e1 (c, modrm_mem); e4 (c, (guint32) w);
  e1 (c, 0x48); e1 (c, 0x8d); e1 (c, modrm_lea); e1 (c, 1);
  e1 (c, 0x48); e1 (c, 0x89); e1 (c, modrm_mem); e4 (c, (guint32) w);
}

/* BRANCHTRACE_STALKER_CHECK (tests): count the block in a word of its own, apart from
 * the store, with rcx (saved, and loaded again by every variant after this):
 * mov rcx, [rax+check]; lea rcx, [rcx+1]; mov [rax+check], rcx. Nothing when off. */
static void
emit_check (BtCode * c, gint32 check)
{
  if (check != 0)
    emit_publish (c, check, RCX);
}

/* restore rdx (optional) and rcx, then rax last: mov rax, [rax] */
static void
emit_leave (BtCode * c, gboolean restore_rdx)
{
  if (restore_rdx)
    en (c, (const guint8 []) { 0x48, 0x8b, 0x50, OFF_SAVE_RDX }, 4);
  en (c, (const guint8 []) { 0x48, 0x8b, 0x48, OFF_SAVE_RCX }, 4);
  en (c, (const guint8 []) { 0x48, 0x8b, 0x00 }, 3);
}

/* mov dword [rax + rcx*4 + disp32], id */
static void
emit_store_id (BtCode * c, gint32 disp, guint32 id)
{
  e1 (c, 0xc7); e1 (c, 0x84); e1 (c, 0x88); e4 (c, (guint32) disp); e4 (c, id);
}

static gboolean build_record (BtCode * out, BtThread * t, guint32 id);

/* `48 op 0c 25 disp32`: rcx and an absolute address below 2 GiB (ModRM rm=100, SIB: no
 * base, no index) */
static void
emit_rcx_abs (BtCode * c, guint8 prefix, guint8 op, guint64 address)
{
  e1 (c, prefix); e1 (c, op); e1 (c, 0x0c); e1 (c, 0x25); e4 (c, (guint32) address);
}

/* `48 op 14 25 disp32`: the same with rdx */
static void
emit_rdx_abs (BtCode * c, guint8 op, guint64 address)
{
  e1 (c, 0x48); e1 (c, op); e1 (c, 0x14); e1 (c, 0x25); e4 (c, (guint32) address);
}

/* BRANCHTRACE_STALKER_CHECK below 2 GiB: mov rcx, [check]; lea rcx, [rcx+1];
 * mov [check], rcx (nothing when off) */
static void
emit_check_low (BtCode * c, BtThread * t)
{
  if (t->check == NULL)
    return;
  emit_rcx_abs (c, 0x48, 0x8b, GPOINTER_TO_SIZE (t->check));
  en (c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);             /* lea rcx, [rcx+1] */
  emit_rcx_abs (c, 0x48, 0x89, GPOINTER_TO_SIZE (t->check));
}

/* A call out of code that keeps rax out of T: save rax (`mov [T], rax` in its disp32
 * form, which signals.c does not take for a block start), rax = T, the call, rax put
 * back, and a jump back to `back` */
static void
emit_call_out_low (BtCode * c, guint64 T, guint8 fn, gboolean args, guint32 id, guint back)
{
  en (c, (const guint8 []) { 0x48, 0x89, 0x04, 0x25 }, 4); e4 (c, (guint32) T); /* mov [T], rax */
  e1 (c, 0xb8); e4 (c, (guint32) T);                                   /* mov eax, T */
  emit_call_out_args (c, T, fn, args, id);
  en (c, (const guint8 []) { 0x48, 0x8b, 0x00 }, 3);                   /* mov rax, [rax] */
  emit_jmp_back (c, back);
}

/* Is everything the block-start code of `t` touches below BT_LOW_LIMIT (agent.js maps a
 * ring thread's memory there when it can)? */
static gboolean
bt_is_low (BtThread * t)
{
  guint64 T = GPOINTER_TO_SIZE (t), region = GPOINTER_TO_SIZE (t->region);
  guint64 entry = GPOINTER_TO_SIZE (t->entry), check = GPOINTER_TO_SIZE (t->check);

  return T + 4096 <= BT_LOW_LIMIT && region + t->region_bytes <= BT_LOW_LIMIT &&
      entry + 64 <= BT_LOW_LIMIT && check + 8 <= BT_LOW_LIMIT;
}

/* The ring of 2^16 records when the thread's memory is below 2 GiB: every address fits
 * a disp32, so the code needs no base register and rcx alone is saved. rax, which a
 * block's body often uses at once (a return value), never goes through memory: its
 * store and reload cost 3-9% of the whole run on bzip2, cc1 and jq (docs/stalker.md).
 *   mov [T+8], rcx; mov rcx, [T+nopend]; jrcxz pend
 *   movzx ecx, word [W]; mov dword [rcx*4 + region], id       (W: `written`)
 *   mov rcx, [W]; lea rcx, [rcx+1]; mov [W], rcx
 *   mov rcx, [T+8]; jmp body
 *   pend: mov [T], rax; mov eax, T; the call out; mov rax, [rax]; jmp back
 * (the pend path saves rax in a form that is no block start to signals.c) */
static void
build_record_low (BtCode * c, BtThread * t, guint32 id)
{
  guint64 T = GPOINTER_TO_SIZE (t), W = GPOINTER_TO_SIZE (t->entry) + 16;
  guint ppos, pback, spos;

  emit_rcx_abs (c, 0x48, 0x89, T + OFF_SAVE_RCX);                      /* mov [T+8], rcx */
  emit_rcx_abs (c, 0x48, 0x8b, T + OFF_NOPEND);                        /* mov rcx, [np] */
  e1 (c, 0xe3); ppos = c->n; e1 (c, 0);                                 /* jrcxz pend */
  pback = c->n;
  c->lo = c->n;
  emit_check_low (c, t);
  emit_rcx_abs (c, 0x0f, 0xb7, W);                                     /* movzx ecx, w[W] */
  en (c, (const guint8 []) { 0xc7, 0x04, 0x8d }, 3);                   /* mov [rcx*4+R], id */
  e4 (c, (guint32) GPOINTER_TO_SIZE (t->region)); e4 (c, id);
  emit_rcx_abs (c, 0x48, 0x8b, W);                                     /* mov rcx, [W] */
  en (c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);             /* lea rcx, [rcx+1] */
  emit_rcx_abs (c, 0x48, 0x89, W);                                     /* mov [W], rcx */
  c->hi = c->n;
  emit_rcx_abs (c, 0x48, 0x8b, T + OFF_SAVE_RCX);                      /* mov rcx, [T+8] */
  e1 (c, 0xe9); spos = c->n; e4 (c, 0);                                 /* jmp body */
  c->jend = c->n;
  patch_here (c, ppos);
  emit_call_out_low (c, T, OFF_FLUSH, TRUE, id, pback);
  patch_here32 (c, spos);
}

/* Stream mode the same way (rcx and rdx saved; the chunk's end is a pointer in T):
 *   mov [T+8], rcx; mov [T+16], rdx; mov rcx, [T+nopend]; jrcxz pend
 *   mov rcx, [T+cursor]; mov rdx, [T+chunk_end]; mov dword [rdx+rcx*4], id
 *   lea rcx, [rcx+1]; mov [T+cursor], rcx; mov rdx, [W]; lea rdx, [rdx+1]; mov [W], rdx
 *   jrcxz slow; mov rdx, [T+16]; mov rcx, [T+8]; jmp body
 *   pend, slow: rax saved, the call out, rax put back, back where they left */
static void
build_stream_low (BtCode * c, BtThread * t, guint32 id)
{
  guint64 T = GPOINTER_TO_SIZE (t), W = GPOINTER_TO_SIZE (t->entry) + 16;
  guint ppos, pback, jpos, bpos, spos;

  emit_rcx_abs (c, 0x48, 0x89, T + OFF_SAVE_RCX);                      /* mov [T+8], rcx */
  emit_rdx_abs (c, 0x89, T + OFF_SAVE_RDX);                            /* mov [T+16], rdx */
  emit_rcx_abs (c, 0x48, 0x8b, T + OFF_NOPEND);                        /* mov rcx, [np] */
  e1 (c, 0xe3); ppos = c->n; e1 (c, 0);                                 /* jrcxz pend */
  pback = c->n;
  c->lo = c->n;
  emit_check_low (c, t);
  emit_rcx_abs (c, 0x48, 0x8b, T + OFF_CURSOR);                        /* mov rcx, [cursor] */
  emit_rdx_abs (c, 0x8b, T + OFF_CHUNK_END);                           /* mov rdx, [end] */
  e1 (c, 0xc7); e1 (c, 0x04); e1 (c, 0x8a); e4 (c, id);                /* mov [rdx+rcx*4], id */
  en (c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);             /* lea rcx, [rcx+1] */
  emit_rcx_abs (c, 0x48, 0x89, T + OFF_CURSOR);                        /* mov [cursor], rcx */
  emit_rdx_abs (c, 0x8b, W);                                           /* mov rdx, [W] */
  en (c, (const guint8 []) { 0x48, 0x8d, 0x52, 0x01 }, 4);             /* lea rdx, [rdx+1] */
  emit_rdx_abs (c, 0x89, W);                                           /* mov [W], rdx */
  e1 (c, 0xe3); jpos = c->n; e1 (c, 0);                                 /* jrcxz slow */
  bpos = c->n;
  c->hi = c->n;
  emit_rdx_abs (c, 0x8b, T + OFF_SAVE_RDX);                            /* mov rdx, [T+16] */
  emit_rcx_abs (c, 0x48, 0x8b, T + OFF_SAVE_RCX);                      /* mov rcx, [T+8] */
  e1 (c, 0xe9); spos = c->n; e4 (c, 0);                                 /* jmp body */
  c->jend = c->n;
  patch_here (c, ppos);
  emit_call_out_low (c, T, OFF_FLUSH, TRUE, id, pback);
  patch_here (c, jpos);
  emit_call_out_low (c, T, OFF_SLOW, FALSE, 0, bpos);                 /* slow: reserve */
  patch_here32 (c, spos);
}

static gboolean
emit_record (GumX86Writer * cw, BtThread * t, guint32 id)
{
  BtCode c;

  if (!build_record (&c, t, id))
    return FALSE;
  t->record_len = c.n;                /* the same for every block of the thread */
  t->seq_lo = c.lo;
  t->seq_hi = c.hi;
  t->seq_jend = c.jend;
  gum_x86_writer_put_bytes (cw, c.b, c.n);
  return TRUE;
}

/* The end of a block's body (signals.c, bt_safe_point): `nop dword [rax+marker]`, seven
 * bytes no other code of ours or Stalker's has, before Stalker's code for the block's
 * branch (and before our cache lookups). */
static void
emit_body_end (GumX86Writer * cw)
{
  guint8 b[7] = { 0x0f, 0x1f, 0x80, 0, 0, 0, 0 };
  guint32 m = bt_config.marker;

  b[3] = m & 0xff; b[4] = (m >> 8) & 0xff; b[5] = (m >> 16) & 0xff; b[6] = m >> 24;
  gum_x86_writer_put_bytes (cw, b, 7);
}

/* The code for block `id` of thread `t`, into `out` (320 bytes); its length, 0 if none.
 * For the tests: they disassemble it. */
guint
bt_build_code (BtThread * t, guint32 id, guint8 * out)
{
  BtCode c;
  guint i;

  if (!build_record (&c, t, id))
    return 0;
  for (i = 0; i != c.n; i++)
    out[i] = c.b[i];
  return c.n;
}

static gboolean
build_record (BtCode * out, BtThread * t, guint32 id)
{
  BtCode c;
  guint64 T = GPOINTER_TO_SIZE (t);
  gint64 region = (gint64) GPOINTER_TO_SIZE (t->region) - (gint64) T;
  gint32 w = (gint32) ((gint64) GPOINTER_TO_SIZE (t->entry) + 16 - (gint64) T);
  guint jpos, bpos, spos, ppos, pback;
  gint32 check;

  c.n = 0;
  c.bad = FALSE;
  check = (t->check != NULL)
      ? (gint32) ((gint64) GPOINTER_TO_SIZE (t->check) - (gint64) T) : 0;

  if (t->mode == 1 && t->ring_pow2 == 16 && bt_is_low (t))
    build_record_low (&c, t, id);
  else if (t->mode == 2 && bt_is_low (t))
    build_stream_low (&c, t, id);
  else if (t->mode == 1 && t->ring_pow2 == 16)
  {
    /* ring of 2^16 records: movzx ecx, word [rax+W] is written % 65536 */
    ppos = emit_enter (&c, T, FALSE, &pback);
    c.lo = c.n;
    emit_check (&c, check);
    e1 (&c, 0x0f); e1 (&c, 0xb7); e1 (&c, 0x88); e4 (&c, (guint32) w);
    emit_store_id (&c, (gint32) region, id);
    emit_publish (&c, w, RCX);
    c.hi = c.n;
    emit_leave (&c, FALSE);
    e1 (&c, 0xe9); spos = c.n; e4 (&c, 0);                              /* jmp body */
    c.jend = c.n;
    emit_pend (&c, T, ppos, pback, id);
    patch_here32 (&c, spos);
  }
  else if (t->mode == 1 && t->ring_pow2 != 0 && bt_config.use_bmi2)
  {
    /* ring of 2^k records with BMI2: rcx = (written << (64-k)) >> (64-k) */
    ppos = emit_enter (&c, T, TRUE, &pback);
    c.lo = c.n;
    emit_check (&c, check);
    e1 (&c, 0xba); e4 (&c, 64 - t->ring_pow2);                       /* mov edx, 64-k */
    en (&c, (const guint8 []) { 0xc4, 0xe2, 0xe9, 0xf7, 0x88 }, 5);  /* shlx rcx, [rax+W], rdx */
    e4 (&c, (guint32) w);
    en (&c, (const guint8 []) { 0xc4, 0xe2, 0xeb, 0xf7, 0xc9 }, 5);  /* shrx rcx, rcx, rdx */
    emit_store_id (&c, (gint32) region, id);
    emit_publish (&c, w, RCX);
    c.hi = c.n;
    emit_leave (&c, TRUE);
    e1 (&c, 0xe9); spos = c.n; e4 (&c, 0);                              /* jmp body */
    c.jend = c.n;
    emit_pend (&c, T, ppos, pback, id);
    patch_here32 (&c, spos);
  }
  else if (t->mode == 1)
  {
    /* any capacity: cursor = slot - capacity counts up to 0, where jrcxz wraps it */
    ppos = emit_enter (&c, T, FALSE, &pback);
    c.lo = c.n;
    emit_check (&c, check);
    en (&c, (const guint8 []) { 0x48, 0x8b, 0x48, OFF_CURSOR }, 4);  /* mov rcx, [rax+cursor] */
    emit_store_id (&c, (gint32) (region + (gint64) t->capacity * 4), id);
    en (&c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);        /* lea rcx, [rcx+1] */
    e1 (&c, 0xe3); jpos = c.n; e1 (&c, 0);                            /* jrcxz wrap */
    bpos = c.n;
    en (&c, (const guint8 []) { 0x48, 0x89, 0x48, OFF_CURSOR }, 4);  /* mov [rax+cursor], rcx */
    emit_publish (&c, w, RCX);
    c.hi = c.n;
    emit_leave (&c, FALSE);
    e1 (&c, 0xe9); spos = c.n; e4 (&c, 0);                              /* jmp body */
    c.jend = c.n;
    patch_here (&c, jpos);
    e1 (&c, 0x48); e1 (&c, 0xc7); e1 (&c, 0xc1);                      /* wrap: mov rcx, -cap */
    e4 (&c, (guint32) (-(gint64) t->capacity));
    emit_jmp_back (&c, bpos);
    emit_pend (&c, T, ppos, pback, id);
    patch_here32 (&c, spos);
  }
  else
  {
    /* stream: cursor = written - reserved_end counts up to 0; jrcxz takes the slow path */
    ppos = emit_enter (&c, T, TRUE, &pback);
    c.lo = c.n;
    emit_check (&c, check);
    en (&c, (const guint8 []) { 0x48, 0x8b, 0x48, OFF_CURSOR }, 4);     /* mov rcx, [rax+cursor] */
    en (&c, (const guint8 []) { 0x48, 0x8b, 0x50, OFF_CHUNK_END }, 4);  /* mov rdx, [rax+chunk_end] */
    e1 (&c, 0xc7); e1 (&c, 0x04); e1 (&c, 0x8a); e4 (&c, id);           /* mov dword [rdx+rcx*4], id */
    en (&c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);           /* lea rcx, [rcx+1] */
    en (&c, (const guint8 []) { 0x48, 0x89, 0x48, OFF_CURSOR }, 4);     /* mov [rax+cursor], rcx */
    emit_publish (&c, w, RDX);
    e1 (&c, 0xe3); jpos = c.n; e1 (&c, 0);                               /* jrcxz slow */
    bpos = c.n;
    c.hi = c.n;
    emit_leave (&c, TRUE);
    e1 (&c, 0xe9); spos = c.n; e4 (&c, 0);                                 /* jmp body */
    c.jend = c.n;
    emit_pend (&c, T, ppos, pback, id);
    patch_here (&c, jpos);
    emit_call_out (&c, T, OFF_SLOW);                                     /* slow: reserve */
    emit_jmp_back (&c, bpos);
    patch_here32 (&c, spos);
  }

  *out = c;
  return !c.bad;
}

/* ------------------------------------------------------------------------------------ */
/* Returns (docs/stalker.md, "Returns"). Stalker turns a `ret` into a lookup in an inline
 * cache of two entries per `ret`, and a call into C (~400 ns here) on every miss: a
 * function called from three places in turn misses every time (gzip's send_bits; 60M
 * such returns took 25 s). Before Stalker's own code for the `ret` we look the return
 * address up in the thread's cache of return sites (BT_RC_ENTRIES, filled by the
 * transform with each block that follows a call) and, on a hit, jump straight to the
 * block's code; on a miss Stalker's code runs as before. The flags are kept as Stalker
 * keeps them around its cache (lahf/sahf: OF is not, and is dead after a return). */
static void
emit_restore_for_ret (BtCode * c, guint64 T)
{
  en (c, (const guint8 []) { 0x48, 0x8b, 0x48, OFF_SAVE_RCX }, 4);       /* mov rcx, [rax+8] */
  en (c, (const guint8 []) { 0x48, 0x8b, 0x50, OFF_SAVE_RDX }, 4);       /* mov rdx, [rax+16] */
  en (c, (const guint8 []) { 0x8a, 0xa0 }, 2); e4 (c, OFF_SAVE_FLAGS + 1); /* mov ah, [rax+fl+1] */
  e1 (c, 0x9e);                                                           /* sahf */
  e1 (c, 0x48); e1 (c, 0xa1); e8 (c, T + OFF_SAVE_RAX);                  /* mov rax, [T] */
}

/* miss: want = the target (rcx holds its key, inverted), nopend = 0: the next block, the
 * target's, takes the pend path, where bt_flush_pending puts it in the cache */
static void
emit_want (BtCode * c)
{
  en (c, (const guint8 []) { 0x48, 0xf7, 0xd1 }, 3);                     /* not rcx */
  en (c, (const guint8 []) { 0x48, 0x89, 0x88 }, 3); e4 (c, OFF_WANT);  /* mov [rax+want], rcx */
  en (c, (const guint8 []) { 0x48, 0xc7, 0x40, OFF_NOPEND }, 4); e4 (c, 0); /* mov [rax+nopend], 0 */
}

/* rdx = the code of the cache entry for rcx (the target; rcx becomes its key), else to
 * `miss`: the two rel8 positions go in miss[0] and miss[1] (patched by patch_misses). A
 * code of 0 is a miss too: the cache's pages may be dropped (bt_cache_clear) between
 * the key's load and the code's, and a dropped page reads 0. */
static void
emit_lookup (BtCode * c, guint miss[2])
{
  en (c, (const guint8 []) { 0x89, 0xca }, 2);                           /* mov edx, ecx */
  en (c, (const guint8 []) { 0xc1, 0xea, 13 }, 3);                       /* shr edx, 13 */
  en (c, (const guint8 []) { 0x31, 0xca }, 2);                           /* xor edx, ecx */
  en (c, (const guint8 []) { 0x81, 0xe2 }, 2); e4 (c, BT_RC_ENTRIES - 1); /* and edx, mask */
  en (c, (const guint8 []) { 0xc1, 0xe2, 4 }, 3);                        /* shl edx, 4 */
  en (c, (const guint8 []) { 0x48, 0x03, 0x90 }, 3); e4 (c, OFF_RETCACHE); /* add rdx, [rax+rc] */
  en (c, (const guint8 []) { 0x48, 0xf7, 0xd1 }, 3);                     /* not rcx: the key */
  en (c, (const guint8 []) { 0x48, 0x3b, 0x0a }, 3);                     /* cmp rcx, [rdx] */
  e1 (c, 0x75); miss[0] = c->n; e1 (c, 0);                               /* jne miss */
  en (c, (const guint8 []) { 0x48, 0x8b, 0x52, 0x08 }, 4);               /* mov rdx, [rdx+8] */
  en (c, (const guint8 []) { 0x48, 0x85, 0xd2 }, 3);                     /* test rdx, rdx */
  e1 (c, 0x74); miss[1] = c->n; e1 (c, 0);                               /* jz miss */
}

static void
patch_misses (BtCode * c, const guint miss[2])
{
  patch_here (c, miss[0]);
  patch_here (c, miss[1]);
}

static gboolean
build_ret (BtCode * out, BtThread * t, guint16 npop)
{
  BtCode c;
  guint64 T = GPOINTER_TO_SIZE (t);
  guint miss[2];
  gint32 past = 8 + (gint32) npop;

  c.n = 0;
  c.bad = FALSE;
  e1 (&c, 0x48); e1 (&c, 0xa3); e8 (&c, T + OFF_SAVE_RAX);               /* mov [T], rax */
  e1 (&c, 0x9f);                                                          /* lahf */
  e1 (&c, 0x48); e1 (&c, 0xa3); e8 (&c, T + OFF_SAVE_FLAGS);             /* mov [T+fl], rax */
  e1 (&c, 0x48); e1 (&c, 0xb8); e8 (&c, T);                              /* mov rax, T */
  en (&c, (const guint8 []) { 0x48, 0x89, 0x48, OFF_SAVE_RCX }, 4);      /* mov [rax+8], rcx */
  en (&c, (const guint8 []) { 0x48, 0x89, 0x50, OFF_SAVE_RDX }, 4);      /* mov [rax+16], rdx */
  en (&c, (const guint8 []) { 0x48, 0x8b, 0x0c, 0x24 }, 4);              /* mov rcx, [rsp] */
  emit_lookup (&c, miss);
  en (&c, (const guint8 []) { 0x48, 0x89, 0x14, 0x24 }, 4);              /* mov [rsp], rdx */
  emit_restore_for_ret (&c, T);
  en (&c, (const guint8 []) { 0x48, 0x8d, 0xa4, 0x24 }, 4); e4 (&c, (guint32) past); /* lea rsp, [rsp+8+n] */
  en (&c, (const guint8 []) { 0xff, 0xa4, 0x24 }, 3); e4 (&c, (guint32) -past);     /* jmp [rsp-8-n] */
  patch_misses (&c, miss);
  emit_want (&c);
  emit_restore_for_ret (&c, T);                                          /* miss: Stalker's ret */
  *out = c;
  return !c.bad;
}

/* Indirect jumps and calls (`jmp r/m64`, `call r/m64`) go through the same cache, keyed
 * by the target. The target is loaded with the instruction's own operand, re-encoded
 * as `mov rax, r/m64` (rax still holds its own value then; a rip-relative operand
 * becomes an absolute load); a hit ends with `jmp [jslot]` (8 bytes of the thread's
 * below 2 GiB: a jump must not touch the stack, whose red zone may be live), a call
 * first storing its return address where the call would. Forms we do not re-encode
 * (segment or size prefixes) are left to Stalker. Returns FALSE for those. */
static gboolean
emit_target_load (BtCode * c, const guint8 * b, guint size, guint64 next)
{
  guint i = 0, rex = 0, modrm, mod, rm;

  while (i < size && (b[i] == 0x3e || b[i] == 0xf2))  /* notrack, bnd: no effect on a load */
    i++;
  if (i < size && (b[i] & 0xf0) == 0x40)
    rex = b[i++];
  if (i + 2 > size || b[i] != 0xff)
    return FALSE;
  modrm = b[i + 1];
  if (((modrm >> 3) & 7) != 2 && ((modrm >> 3) & 7) != 4)
    return FALSE;
  mod = modrm >> 6;
  rm = modrm & 7;
  i += 2;
  if (mod == 3)
  {
    e1 (c, 0x48 | (rex & 1)); e1 (c, 0x8b); e1 (c, 0xc0 | rm);        /* mov rax, reg */
    return TRUE;
  }
  if (mod == 0 && rm == 5)
  {
    gint32 disp;
    if (i + 4 != size)
      return FALSE;
    disp = (gint32) (b[i] | (b[i + 1] << 8) | (b[i + 2] << 16) | ((guint32) b[i + 3] << 24));
    e1 (c, 0x48); e1 (c, 0xb8); e8 (c, next + (gint64) disp);          /* mov rax, address */
    en (c, (const guint8 []) { 0x48, 0x8b, 0x00 }, 3);                 /* mov rax, [rax] */
    return TRUE;
  }
  e1 (c, 0x48 | (rex & 3)); e1 (c, 0x8b); e1 (c, modrm & 0xc7);         /* mov rax, [same] */
  for (; i < size; i++)
    e1 (c, b[i]);
  return TRUE;
}

static gboolean
build_indirect (BtCode * out, BtThread * t, const cs_insn * insn, gboolean call)
{
  BtCode c;
  guint64 T = GPOINTER_TO_SIZE (t);
  guint32 slot = (guint32) GPOINTER_TO_SIZE (t->jslot);
  guint miss[2];

  c.n = 0;
  c.bad = FALSE;
  e1 (&c, 0x48); e1 (&c, 0xa3); e8 (&c, T + OFF_SAVE_RAX);               /* mov [T], rax */
  e1 (&c, 0x9f);                                                          /* lahf */
  e1 (&c, 0x48); e1 (&c, 0xa3); e8 (&c, T + OFF_SAVE_FLAGS);             /* mov [T+fl], rax */
  e1 (&c, 0x48); e1 (&c, 0xa1); e8 (&c, T + OFF_SAVE_RAX);               /* mov rax, [T] */
  if (!emit_target_load (&c, insn->bytes, insn->size, insn->address + insn->size))
    return FALSE;
  e1 (&c, 0x48); e1 (&c, 0xa3); e8 (&c, T + OFF_SAVE_TARGET);            /* mov [T+tg], rax */
  e1 (&c, 0x48); e1 (&c, 0xb8); e8 (&c, T);                              /* mov rax, T */
  en (&c, (const guint8 []) { 0x48, 0x89, 0x48, OFF_SAVE_RCX }, 4);      /* mov [rax+8], rcx */
  en (&c, (const guint8 []) { 0x48, 0x89, 0x50, OFF_SAVE_RDX }, 4);      /* mov [rax+16], rdx */
  en (&c, (const guint8 []) { 0x48, 0x8b, 0x88 }, 3); e4 (&c, OFF_SAVE_TARGET); /* mov rcx, [rax+tg] */
  emit_lookup (&c, miss);
  en (&c, (const guint8 []) { 0x48, 0x89, 0x14, 0x25 }, 4); e4 (&c, slot); /* mov [jslot], rdx */
  if (call)
  {
    e1 (&c, 0x48); e1 (&c, 0xba); e8 (&c, insn->address + insn->size);  /* mov rdx, return */
    en (&c, (const guint8 []) { 0x48, 0x89, 0x54, 0x24, 0xf8 }, 5);     /* mov [rsp-8], rdx */
  }
  emit_restore_for_ret (&c, T);
  if (call)
    en (&c, (const guint8 []) { 0x48, 0x8d, 0x64, 0x24, 0xf8 }, 5);     /* lea rsp, [rsp-8] */
  en (&c, (const guint8 []) { 0xff, 0x24, 0x25 }, 3); e4 (&c, slot);     /* jmp [jslot] */
  patch_misses (&c, miss);
  emit_want (&c);
  emit_restore_for_ret (&c, T);                          /* miss: Stalker's code for it */
  *out = c;
  return !c.bad;
}

static gboolean
emit_indirect (GumX86Writer * cw, BtThread * t, const cs_insn * insn, gboolean call)
{
  BtCode c;

  if (t->jslot == NULL || GPOINTER_TO_SIZE (t->jslot) >= 0x80000000 ||
      !build_indirect (&c, t, insn, call))
    return FALSE;
  gum_x86_writer_put_bytes (cw, c.b, c.n);
  return TRUE;
}

static gboolean
emit_ret (GumX86Writer * cw, BtThread * t, guint16 npop)
{
  BtCode c;

  if (!build_ret (&c, t, npop))
    return FALSE;
  if (t->any_ret_code == 0)
    t->any_ret_code = cw->pc;
  gum_x86_writer_put_bytes (cw, c.b, c.n);
  return TRUE;
}

/* Remember that the block at `real` starts at `code` in this thread's Stalker code (the
 * key last: the thread itself reads the entry key first). */
static void
bt_cache_put (BtThread * t, guint64 real, guint64 code)
{
  guint64 * e = t->retcache + 2 * BT_RC_INDEX (real);

  e[0] = 0;
  e[1] = code;
  e[0] = BT_RC_KEY (real);
  t->rc_used = 1;
}

/* Forget every return site: the cache's pages are dropped (madvise MADV_DONTNEED: they
 * read 0 again, and give their memory back). Before a thread is followed (anew: Stalker's
 * old code is gone) and when recording stops (so that threads go back to Stalker's code,
 * which lets them go). A thread may be inside a lookup meanwhile: a code of 0 is a miss
 * (emit_lookup). If the pages cannot be dropped, the keys are set to 0 one by one. */
void
bt_cache_clear (BtThread * t)
{
  guint i;

  t->want = BT_RC_EMPTY;
  t->any_ret_code = 0;
  if (t->retcache == NULL || !t->rc_used)
    return;                           /* still as mapped: every key 0 */
  t->rc_used = 0;
  if (syscall (28, t->retcache, (gsize) BT_RC_ENTRIES * 16, 4) == 0)   /* madvise */
    return;
  for (i = 0; i != BT_RC_ENTRIES; i++)
  {
    if (t->retcache[2 * i] != 0)
      t->retcache[2 * i] = 0;
  }
}

void bt_flush_pending (BtThread * t, guint32 id, guint64 code);

/* Is the tracer gone (nobody will ever drain)? It no longer exists, it is a zombie
 * (killed, and its parent has not reaped it yet: kill(pid, 0) still succeeds then), or
 * it is exiting. */
gboolean
bt_tracer_gone (void)
{
  gchar buf[512];
  glong fd, n, i;

  if (bt_config.host_pid == 0)
    return FALSE;
  if (kill ((int) bt_config.host_pid, 0) != 0 && *__errno_location () == 3)
    return TRUE;                      /* ESRCH */
  if (bt_config.host_stat == NULL)
    return FALSE;
  fd = syscall (2, bt_config.host_stat, 0x80000);   /* open (O_RDONLY | O_CLOEXEC) */
  if (fd < 0)
    return *__errno_location () == 2;               /* ENOENT: gone */
  n = syscall (0, fd, buf, sizeof (buf) - 1);       /* read */
  syscall (3, fd);                                  /* close */
  for (i = n - 1; i > 0 && buf[i] != ')'; i--)
    ;
  if (i <= 0 || i + 2 >= n)
    return FALSE;
  if (buf[i + 2] == 'Z' || buf[i + 2] == 'X')
    return TRUE;
  /* Dying (SIGKILL) but not a zombie yet: PF_EXITING (0x4) in the flags, the 6th field
   * after the state. It is set before the process closes its files, so it shows when
   * Frida sees the tracer's connection go away. */
  {
    gint field = 0;
    gulong flags = 0;
    glong j;

    for (j = i + 2; j < n && field < 6; j++)
      if (buf[j] == ' ')
        field++;
    for (; j < n && buf[j] >= '0' && buf[j] <= '9'; j++)
      flags = flags * 10 + (gulong) (buf[j] - '0');
    return field == 6 && (flags & 0x4) != 0;
  }
}

/* Stream mode: the reserved chunk is full (written == reserved_end, published). Reserve
 * the next one, waiting while the consumer has not freed it. Runs on the thread's
 * stack with every register the emitted code did not save pushed. */
void
bt_stream_slow (BtThread * t)
{
  volatile guint64 * e = t->entry;
  guint64 end = t->reserved_end + t->chunk;
  guint64 slot;
  gulong delay = 50;
  guint spins = 0;

  g_atomic_int_add (&t->in_slow, 1);
  /* the chunk [end - chunk, end) is free once consumed >= end - capacity */
  if (end > t->capacity && e[3] < end - t->capacity && !bt_config.abort)
  {
    e[5] = e[5] + 1;                  /* producer_waits: one per wait episode */
    while (e[3] < end - t->capacity && !bt_config.abort)
    {
      /* 50 us doubling up to 250 us: the consumer frees a chunk by copying it out
       * (~0.1 ms; it compresses on other threads), so a longer sleep is mostly time
       * the program could have run (docs/benchmarks.md, issue 15) */
      g_usleep (delay);
      delay = MIN (delay * 2, 250);
      if (++spins % 512 == 0 && bt_tracer_gone ())   /* ~130 ms */
        bt_config.abort = 1;          /* nobody will drain: overwrite from now on */
    }
  }
  t->reserved_end = end;
  e[7] = end;                         /* the reserved_end scratch word, for readers */
  slot = end % t->capacity;
  if (slot == 0)
    slot = t->capacity;
  t->chunk_end = GPOINTER_TO_SIZE (t->region) + slot * 4;
  t->cursor = -(gint64) t->chunk;
  g_atomic_int_add (&t->in_slow, -1);
}

/* Set up a thread context once the agent has mapped its memory. */
void
bt_thread_init (BtThread * t, volatile guint64 * entry, guint32 * region, guint64 capacity,
                guint64 chunk, guint32 mode, guint32 tid, guint64 region_bytes)
{
  guint64 w = entry[2];
  guint32 k;

  t->entry = entry;
  t->region = region;
  t->capacity = capacity;
  t->chunk = chunk;
  t->mode = mode;
  t->tid = tid;
  t->region_bytes = region_bytes;
  t->slow = bt_stream_slow;
  t->flush = bt_flush_pending;
  t->nopend = 1;
  t->npending = 0;
  t->in_slow = 0;
  t->ring_pow2 = 0;
  for (k = 1; k < 63; k++)
    if (((guint64) 1 << k) == capacity)
      t->ring_pow2 = k;
  if (mode == 1)
  {
    t->cursor = (gint64) (w % capacity) - (gint64) capacity;
    entry[6] = w % capacity;          /* the slot_cursor scratch word */
  }
  else
  {
    /* a chunk another producer began was reserved by it (docs/store-format.md) */
    guint64 end = (w + chunk - 1) / chunk * chunk;
    t->reserved_end = end;
    t->cursor = (gint64) w - (gint64) end;
    if (end == w)
    {
      bt_stream_slow (t);             /* at a chunk boundary: reserve the next chunk */
    }
    else
    {
      guint64 slot = end % capacity;
      entry[7] = end;
      t->chunk_end = GPOINTER_TO_SIZE (region) + (slot == 0 ? capacity : slot) * 4;
    }
  }
}
