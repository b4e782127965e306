/*
 * branchtrace Stalker recorder, part 2 of 6: the machine code each block starts with
 * (docs/stalker.md, "The emitted code") below 2 GiB, and the paths it jumps to after the
 * block (variants.c: the variants above 2 GiB and the choice; lookups.c: the return and
 * indirect-branch cache; thread.c: the stream's slow path and a thread's set-up).
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
  guint tramp;          /* a block start whose pend path comes after the block (emit_stub):
                         * where the rel32 of its trampoline is; 0: none */
  gint32 base;          /* how far b[0] is past the block's entry (a stub's: > 0) */
  guint kind;           /* with tramp: BT_STUB_RING or BT_STUB_GS, the stub it needs */
  guint store;          /* BT_STUB_GS: where its store is */
} BtCode;

#define BT_STUB_RING 1
#define BT_STUB_GS 2

/* A block-start code's pend path, to be emitted after the block (emit_stub) */
typedef struct
{
  guint8 * code;        /* where the block-start code was written; NULL: no stub */
  GumAddress pc;        /* and its address */
  guint32 id;
  guint kind, lo, hi, store, tramp;
} BtStub;

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
#define OFF_GS_SKIP 4064

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
 * emitted code did not save pushed, rdi = T; `fn` is the offset of the pointer in T.
 * With `args`, also esi = `id` and rdx = the block's entry (`c->base` bytes before b[0]),
 * for bt_flush_pending. */
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
    e4 (c, (guint32) -(c->base + (gint32) (c->n + 4)));
  }
  en (c, (const guint8 []) { 0xff, 0x50, fn }, 3);                   /* call [rax+fn] */
  en (c, (const guint8 []) { 0x48, 0x89, 0xdc }, 3);                 /* mov rsp, rbx */
  en (c, (const guint8 []) { 0x5b, 0x41, 0x5b, 0x41, 0x5a, 0x41, 0x59, 0x41, 0x58, 0x5f,
      0x5e, 0x5a }, 12);                            /* pop rbx r11 r10 r9 r8 rdi rsi rdx */
  e1 (c, 0x9d);                                                       /* popfq */
  en (c, (const guint8 []) { 0x48, 0x8d, 0xa4, 0x24, 0x80, 0, 0, 0 }, 8); /* lea rsp,[rsp+128] */
  e1 (c, 0x48); e1 (c, 0xb8); e8 (c, T);                            /* mov rax, T */
}

static gboolean build_record (BtCode * out, BtThread * t, guint32 id);
void bt_gs_decide (BtThread * t);   /* gs.c */
static void build_stream_gs (BtCode * c, BtThread * t, guint32 id);   /* gs.c */

/* `prefix op modrm sib disp32`: register `reg` and an absolute address below 2 GiB
 * (ModRM mod=00 rm=100, SIB: no base, no index), e.g. `48 89 0c 25` mov [a], rcx */
static void
emit_abs (BtCode * c, guint8 prefix, guint8 op, guint reg, guint64 address)
{
  e1 (c, prefix); e1 (c, op); e1 (c, 0x04 | (reg << 3)); e1 (c, 0x25);
  e4 (c, (guint32) address);
}

/* BRANCHTRACE_STALKER_CHECK below 2 GiB: mov rcx, [check]; lea rcx, [rcx+1];
 * mov [check], rcx (nothing when off) */
static void
emit_check_low (BtCode * c, BtThread * t)
{
  if (t->check == NULL)
    return;
  emit_abs (c, 0x48, 0x8b, RCX, GPOINTER_TO_SIZE (t->check));
  en (c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);             /* lea rcx, [rcx+1] */
  emit_abs (c, 0x48, 0x89, RCX, GPOINTER_TO_SIZE (t->check));
}

/* The start of both variants below 2 GiB: save rcx (and rdx), `mov rcx, [T+nopend];
 * jrcxz pend`, and the test counter. Returns where the jrcxz displacement goes; `back`:
 * where the pend path comes back to (the start of [lo, hi) too). */
static guint
emit_enter_low (BtCode * c, BtThread * t, gboolean save_rdx, guint * back)
{
  guint64 T = GPOINTER_TO_SIZE (t);
  guint pos;

  emit_abs (c, 0x48, 0x89, RCX, T + OFF_SAVE_RCX);                      /* mov [T+8], rcx */
  if (save_rdx)
    emit_abs (c, 0x48, 0x89, RDX, T + OFF_SAVE_RDX);                   /* mov [T+16], rdx */
  emit_abs (c, 0x48, 0x8b, RCX, T + OFF_NOPEND);                        /* mov rcx, [np] */
  e1 (c, 0xe3); pos = c->n; e1 (c, 0);                                  /* jrcxz pend */
  *back = c->lo = c->n;
  emit_check_low (c, t);
  return pos;
}

/* A call out of code that keeps rax out of T: save rax (`mov [T], rax` in its disp32
 * form, which signals.c does not take for a block start), rax = T, the call, rax put
 * back (emit_call_out_saved); and a jump back to `back` (emit_call_out_low) */
static void
emit_call_out_saved (BtCode * c, guint64 T, guint8 fn, gboolean args, guint32 id)
{
  emit_abs (c, 0x48, 0x89, RAX, T);                                     /* mov [T], rax */
  e1 (c, 0xb8); e4 (c, (guint32) T);                                   /* mov eax, T */
  emit_call_out_args (c, T, fn, args, id);
  en (c, (const guint8 []) { 0x48, 0x8b, 0x00 }, 3);                   /* mov rax, [rax] */
}

static void
emit_call_out_low (BtCode * c, guint64 T, guint8 fn, gboolean args, guint32 id, guint back)
{
  emit_call_out_saved (c, T, fn, args, id);
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

/* `mov rcx, imm64` whose immediate begins with `jmp rel32`: the fall-through runs it as a
 * mov (rcx is loaded again next), a `jrcxz` two bytes into it takes the jmp to the block's
 * pend path, which comes after the block (emit_stub). So the common path runs on into the
 * body: no `jmp body` over out-of-line code (one taken jump fewer per block). */
static void
emit_tramp (BtCode * c)
{
  e1 (c, 0x48); e1 (c, 0xb9); e1 (c, 0xe9);
  c->tramp = c->n;
  e4 (c, 0); e1 (c, 0xcc); e1 (c, 0xcc); e1 (c, 0xcc);
}

/* The start of both variants with a trampoline (the ring's below, gs.c's stream):
 * mov [T+8], rcx; mov rcx, [T+nopend]; jrcxz tramp; back (lo): the trampoline; the test
 * counter */
static void
emit_enter_tramp (BtCode * c, BtThread * t)
{
  guint64 T = GPOINTER_TO_SIZE (t);

  emit_abs (c, 0x48, 0x89, RCX, T + OFF_SAVE_RCX);                      /* mov [T+8], rcx */
  emit_abs (c, 0x48, 0x8b, RCX, T + OFF_NOPEND);                        /* mov rcx, [np] */
  en (c, (const guint8 []) { 0xe3, 0x02 }, 2);                         /* jrcxz tramp */
  c->lo = c->n;
  emit_tramp (c);
  emit_check_low (c, t);
}

/* Their end: publish (mov rcx, [W]; lea rcx, [rcx+1]; mov [W], rcx), then rcx back
 * (mov rcx, [T+8]), and the body follows */
static void
emit_leave_tramp (BtCode * c, BtThread * t, guint64 W)
{
  emit_abs (c, 0x48, 0x8b, RCX, W);                                     /* mov rcx, [W] */
  en (c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);             /* lea rcx, [rcx+1] */
  emit_abs (c, 0x48, 0x89, RCX, W);                                     /* mov [W], rcx */
  c->hi = c->n;
  emit_abs (c, 0x48, 0x8b, RCX, GPOINTER_TO_SIZE (t) + OFF_SAVE_RCX);   /* mov rcx, [T+8] */
  c->jend = c->n;
}

/* The ring of 2^16 records when the thread's memory is below 2 GiB: every address fits
 * a disp32, so the code needs no base register and rcx alone is saved. rax, which a
 * block's body often uses at once (a return value), never goes through memory: its
 * store and reload cost 3-9% of the whole run on bzip2, cc1 and jq (docs/stalker.md).
 *   mov [T+8], rcx; mov rcx, [T+nopend]; jrcxz tramp
 *   back: mov rcx, imm64 (tramp: its first five bytes are `jmp pend`)
 *   movzx ecx, word [W]; mov dword [rcx*4 + region], id       (W: `written`)
 *   mov rcx, [W]; lea rcx, [rcx+1]; mov [W], rcx
 *   mov rcx, [T+8]
 *   body: ...
 *   pend (after Stalker's code for the block's branch, emit_stub): mov [T], rax;
 *         mov eax, T; the call out; mov rax, [rax]; jmp back
 * (the pend path saves rax in a form that is no block start to signals.c) */
static void
build_record_low (BtCode * c, BtThread * t, guint32 id)
{
  guint64 W = GPOINTER_TO_SIZE (t->entry) + 16;

  emit_enter_tramp (c, t);
  emit_abs (c, 0x0f, 0xb7, RCX, W);                                     /* movzx ecx, w[W] */
  en (c, (const guint8 []) { 0xc7, 0x04, 0x8d }, 3);                   /* mov [rcx*4+R], id */
  e4 (c, (guint32) GPOINTER_TO_SIZE (t->region)); e4 (c, id);
  emit_leave_tramp (c, t, W);
  c->kind = BT_STUB_RING;
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

  ppos = emit_enter_low (c, t, TRUE, &pback);
  emit_abs (c, 0x48, 0x8b, RCX, T + OFF_CURSOR);                        /* mov rcx, [cursor] */
  emit_abs (c, 0x48, 0x8b, RDX, T + OFF_CHUNK_END);                     /* mov rdx, [end] */
  e1 (c, 0xc7); e1 (c, 0x04); e1 (c, 0x8a); e4 (c, id);                /* mov [rdx+rcx*4], id */
  en (c, (const guint8 []) { 0x48, 0x8d, 0x49, 0x01 }, 4);             /* lea rcx, [rcx+1] */
  emit_abs (c, 0x48, 0x89, RCX, T + OFF_CURSOR);                        /* mov [cursor], rcx */
  emit_abs (c, 0x48, 0x8b, RDX, W);                                     /* mov rdx, [W] */
  en (c, (const guint8 []) { 0x48, 0x8d, 0x52, 0x01 }, 4);             /* lea rdx, [rdx+1] */
  emit_abs (c, 0x48, 0x89, RDX, W);                                     /* mov [W], rdx */
  e1 (c, 0xe3); jpos = c->n; e1 (c, 0);                                 /* jrcxz slow */
  bpos = c->n;
  c->hi = c->n;
  emit_abs (c, 0x48, 0x8b, RDX, T + OFF_SAVE_RDX);                      /* mov rdx, [T+16] */
  emit_abs (c, 0x48, 0x8b, RCX, T + OFF_SAVE_RCX);                      /* mov rcx, [T+8] */
  e1 (c, 0xe9); spos = c->n; e4 (c, 0);                                 /* jmp body */
  c->jend = c->n;
  patch_here (c, ppos);
  emit_call_out_low (c, T, OFF_FLUSH, TRUE, id, pback);
  patch_here (c, jpos);
  emit_call_out_low (c, T, OFF_SLOW, FALSE, 0, bpos);                 /* slow: reserve */
  patch_here32 (c, spos);
}

static gboolean
emit_record (GumX86Writer * cw, BtThread * t, guint32 id, BtStub * stub)
{
  BtCode c;

  if (t->gs == 0)
    bt_gs_decide (t);                 /* on the thread, before its first block (thread.c) */
  if (!build_record (&c, t, id))
    return FALSE;
  stub->code = NULL;
  if (c.tramp != 0)
  {
    stub->code = gum_x86_writer_cur (cw);
    stub->pc = cw->pc;
    stub->id = id;
    stub->kind = c.kind;
    stub->lo = c.lo;
    stub->hi = c.hi;
    stub->store = c.store;
    stub->tramp = c.tramp;
  }
  t->record_len = c.n;                /* the same for every block of the thread */
  t->seq_lo = c.lo;
  t->seq_hi = c.hi;
  t->seq_jend = c.jend;
  gum_x86_writer_put_bytes (cw, c.b, c.n);
  return TRUE;
}

/* jmp rel32 to `off` bytes into the block's start code, from a stub (c->base: where the
 * stub's b[0] is, from the block's entry) */
static void
emit_jmp_entry (BtCode * c, guint off)
{
  e1 (c, 0xe9);
  e4 (c, (guint32) ((gint32) off - (c->base + (gint32) (c->n + 4))));
}

static void build_stub_gs (BtCode * c, BtThread * t, const BtStub * s);   /* gs.c */

/* After the block (after Stalker's code for its branch, which never falls through, or
 * after the body's end when Stalker goes on in a block of its own: the jmp over the stub
 * is for that case), the out-of-line paths of its block-start code, and the trampoline's
 * jump pointed at them. The ring's:
 *   jmp over; pend: mov [T], rax; mov eax, T; the call out (rdx = the block's entry);
 *   mov rax, [rax]; jmp back; over:
 * (stream through gs: gs.c, build_stub_gs) */
static void
emit_stub (GumX86Writer * cw, BtThread * t, const BtStub * s)
{
  BtCode c;
  guint64 T = GPOINTER_TO_SIZE (t);
  guint gpos, pend;
  gint64 rel;
  guint8 * p;

  if (s->code == NULL)
    return;
  c.n = 0;
  c.bad = FALSE;
  c.tramp = 0;
  c.base = (gint32) ((gint64) cw->pc - (gint64) s->pc);
  e1 (&c, 0xe9); gpos = c.n; e4 (&c, 0);                               /* jmp over */
  pend = c.n;
  if (s->kind == BT_STUB_GS)
    build_stub_gs (&c, t, s);
  else
  {
    emit_call_out_saved (&c, T, OFF_FLUSH, TRUE, s->id);
    emit_jmp_entry (&c, s->lo);                                         /* jmp back */
  }
  patch_here32 (&c, gpos);
  rel = ((gint64) cw->pc + pend) - ((gint64) s->pc + s->tramp + 4);
  p = s->code + s->tramp;
  p[0] = rel & 0xff; p[1] = (rel >> 8) & 0xff; p[2] = (rel >> 16) & 0xff; p[3] = (rel >> 24) & 0xff;
  gum_x86_writer_put_bytes (cw, c.b, c.n);
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
