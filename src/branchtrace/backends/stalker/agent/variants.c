/*
 * branchtrace Stalker recorder, with emit.c (compiled after it and gs.c): the block-start
 * code's other variants, which keep T in rax (the thread's memory above 2 GiB, rings of
 * other sizes, the stream's cursor above 2 GiB), and the choice among all of them
 * (docs/stalker.md, "The emitted code").
 */

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

static void
emit_call_out (BtCode * c, guint64 T, guint8 fn)
{
  emit_call_out_args (c, T, fn, FALSE, 0);
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
  c.tramp = 0;
  c.base = 0;
  c.kind = 0;
  c.store = 0;
  check = (t->check != NULL)
      ? (gint32) ((gint64) GPOINTER_TO_SIZE (t->check) - (gint64) T) : 0;

  if (t->mode == 1 && t->ring_pow2 == 16 && bt_is_low (t) && !bt_config.inline_paths)
    build_record_low (&c, t, id);
  else if (t->mode == 2 && (t->gs == 1 || t->gs == 4) && bt_is_low (t))
    build_stream_gs (&c, t, id);
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
