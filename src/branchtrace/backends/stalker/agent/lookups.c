/*
 * branchtrace Stalker recorder, part 3 of 6: the thread's cache of block code, looked
 * up before each `ret` and indirect call or jump (docs/stalker.md, "Returns"), with the
 * byte emitter of emit.c.
 */

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
  c.tramp = 0;
  c.base = 0;
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
  c.tramp = 0;
  c.base = 0;
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
