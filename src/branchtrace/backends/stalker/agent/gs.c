/*
 * branchtrace Stalker recorder, part 4 of 6 (with thread.c): stream mode through gs (docs/stalker.md,
 * "Stream mode through gs"): the block-start code that stores a record as
 * `mov dword gs:[rcx*4], id`, the guard before an instruction that may set gs, and the
 * thread's side (choosing gs, pointing it at the reserved chunk, giving it up when the
 * program takes gs).
 */

/* Stream mode through gs (below): the ring's code, with the chunk boundary
 * found by the same `movzx` (written % 65536 == 0), where the slow path reserves the next
 * chunk and points gs at it before the record is stored. Both checks jump to the block's
 * trampoline (emit.c, emit_tramp); its stub, after the block (emit_stub), tells them
 * apart by nopend:
 *   mov [T+8], rcx; mov rcx, [T+nopend]; jrcxz tramp
 *   back: mov rcx, imm64 (tramp: its first five bytes are `jmp stub`)
 *   movzx ecx, word [W]; jrcxz tramp
 *   store: mov dword gs:[rcx*4], id
 *   mov rcx, [W]; lea rcx, [rcx+1]; mov [W], rcx
 *   hi: mov rcx, [T+8]
 *   body: ...
 *   stub: mov rcx, [T+nopend]; jrcxz pend
 *   slow: rax saved, the call out (bt_gs_slow), rax put back; ecx = 0; jmp store
 *   pend: rax saved, the call out, rax put back; then back, or, while gs_skip is 1, to
 *         hi: the program has set its own gs and bt_flush_pending recorded the block, or
 *         gs is not pointed yet (thread.c: bt_gs_first points it from the pend path;
 *         after a detach nothing does)
 * Against build_stream_low: no rdx saved and loaded again, no chunk end loaded, no
 * cursor read and written. */
static void
build_stream_gs (BtCode * c, BtThread * t, guint32 id)
{
  guint64 W = GPOINTER_TO_SIZE (t->entry) + 16;

  emit_enter_tramp (c, t);
  emit_abs (c, 0x0f, 0xb7, RCX, W);                                     /* movzx ecx, w[W] */
  e1 (c, 0xe3);                                                         /* jrcxz tramp */
  e1 (c, (guint8) (gint8) ((gint32) c->tramp - 1 - (gint32) (c->n + 1)));
  c->store = c->n;
  en (c, (const guint8 []) { 0x65, 0xc7, 0x04, 0x8d }, 4);             /* mov gs:[rcx*4], id */
  e4 (c, 0); e4 (c, id);
  emit_leave_tramp (c, t, W);
  c->kind = BT_STUB_GS;
}

/* build_stream_gs's stub (emit.c, emit_stub calls it with `c` past its `jmp over`) */
static void
build_stub_gs (BtCode * c, BtThread * t, const BtStub * s)
{
  guint64 T = GPOINTER_TO_SIZE (t);
  guint ppos;

  emit_abs (c, 0x48, 0x8b, RCX, T + OFF_NOPEND);                        /* mov rcx, [np] */
  e1 (c, 0xe3); ppos = c->n; e1 (c, 0);                                 /* jrcxz pend */
  emit_call_out_saved (c, T, OFF_SLOW, FALSE, 0);                      /* slow */
  e1 (c, 0xb9); e4 (c, 0);                                              /* mov ecx, 0 */
  emit_jmp_entry (c, s->store);                                         /* jmp store */
  patch_here (c, ppos);
  emit_call_out_saved (c, T, OFF_FLUSH, TRUE, s->id);                  /* pend */
  emit_abs (c, 0x48, 0x8b, RCX, T + OFF_GS_SKIP);                       /* mov rcx, [gs_skip] */
  en (c, (const guint8 []) { 0xe3, 0x05 }, 2);                         /* jrcxz +5 */
  emit_jmp_entry (c, s->hi);                                            /* jmp hi: recorded */
  emit_jmp_entry (c, s->lo);                                            /* jmp back */
}

/* Before an instruction of the program that may set its gs base, in a thread whose
 * records go through gs (build_stream_gs): a `syscall` with rax = 158 (arch_prctl) and
 * rdi = ARCH_SET_GS, or `wrgsbase`, a load of gs (`unconditional`). It calls
 * bt_flush_pending with id BT_GS_TAKEN: from the next block on, the thread's records
 * go through C (thread.c, bt_gs_taken). Registers live on the stack (below the red
 * zone), not in T: a signal handler may run in the middle of this code.
 *   lea rsp, [rsp-128]; push rcx; lea rcx, [rax-158]; jrcxz maybe
 *   back: pop rcx; lea rsp, [rsp+128]; jmp over
 *   maybe: lea rcx, [rdi-0x1001]; jrcxz taken; jmp back
 *   taken: push rax; mov rax, T; the call out; pop rax; jmp back
 *   over: */
void
bt_gs_guard (GumX86Writer * cw, BtThread * t, gboolean unconditional)
{
  BtCode c;
  guint64 T = GPOINTER_TO_SIZE (t);
  guint back, maybe = 0, taken = 0, over;

  c.n = 0;
  c.bad = FALSE;
  c.tramp = 0;
  c.base = 0;
  en (&c, (const guint8 []) { 0x48, 0x8d, 0x64, 0x24, 0x80, 0x51 }, 6);  /* lea rsp; push rcx */
  if (!unconditional)
  {
    en (&c, (const guint8 []) { 0x48, 0x8d, 0x88 }, 3); e4 (&c, (guint32) -158); /* lea rcx */
    e1 (&c, 0xe3); maybe = c.n; e1 (&c, 0);                             /* jrcxz maybe */
  }
  else
  {
    e1 (&c, 0xeb); taken = c.n; e1 (&c, 0);                             /* jmp taken */
  }
  back = c.n;
  en (&c, (const guint8 []) { 0x59, 0x48, 0x8d, 0xa4, 0x24, 0x80, 0, 0, 0 }, 9);
  e1 (&c, 0xe9); over = c.n; e4 (&c, 0);                                /* jmp over */
  if (!unconditional)
  {
    patch_here (&c, maybe);
    en (&c, (const guint8 []) { 0x48, 0x8d, 0x8f }, 3); e4 (&c, (guint32) -0x1001);
    e1 (&c, 0xe3); taken = c.n; e1 (&c, 0);                             /* jrcxz taken */
    emit_jmp_back (&c, back);
  }
  patch_here (&c, taken);
  e1 (&c, 0x50);                                                        /* push rax */
  e1 (&c, 0x48); e1 (&c, 0xb8); e8 (&c, T);                            /* mov rax, T */
  emit_call_out_args (&c, T, OFF_FLUSH, TRUE, BT_GS_TAKEN);
  e1 (&c, 0x58);                                                        /* pop rax */
  emit_jmp_back (&c, back);
  patch_here32 (&c, over);
  if (!c.bad)
    gum_x86_writer_put_bytes (cw, c.b, c.n);
}

/* The thread side. The block-start code above stores a record through gs with rcx =
 * written % 65536 and the thread's gs base at the reserved chunk; written % 65536 == 0
 * is the chunk boundary, where bt_gs_slow reserves the next chunk and moves gs there
 * (`wrgsbase`, once per 65536 records: agent.js gsStubs; a plain instruction, which no
 * seccomp filter of the program can refuse as it could arch_prctl). x86-64 Linux
 * programs leave gs alone (glibc, musl, Go and Rust keep their thread pointer in fs); a
 * thread whose gs base is anything but 0 or a region of ours keeps the code with a
 * cursor (emit.c, build_stream_low), and so does every thread when the kernel does not
 * let programs use wrgsbase. */

void bt_gs_slow (BtThread * t);
void bt_gs_taken (BtThread * t);

/* Point gs at the chunk reserved last, [reserved_end - chunk, reserved_end), on the
 * thread itself (gs is per thread); read back. */
static gboolean
bt_gs_point (BtThread * t)
{
  guint64 start = t->reserved_end - t->chunk;
  guint64 want = GPOINTER_TO_SIZE (t->region) + (start % t->capacity) * 4;

  bt_config.wrgs (want);
  return bt_config.rdgs () == want;
}

/* Whether `base` (a thread's gs base) is 0 or in a region of ours: a thread inherits
 * the gs base of the thread that made it (clone, fork). */
static gboolean
bt_gs_free (guint64 base)
{
  guint i;

  if (base == 0)
    return TRUE;
  for (i = 0; i != BT_THREAD_SLOTS; i++)
  {
    BtThread * o = bt_config.threads[i];
    guint64 r = (o != NULL) ? GPOINTER_TO_SIZE (o->region) : 0;

    if (o != NULL && base >= r && base < r + o->region_bytes)
      return TRUE;
  }
  return FALSE;
}

/* Decide, before its first block-start code is made, whether that code goes through
 * gs (t->gs = 1) or keeps its cursor (2). Stalker makes a thread's first block on the
 * thread that asked to follow it when that is another one (gum_stalker_infect): gs, per
 * thread, cannot be read or set from there. Then the code goes through gs (4: not
 * pointed yet) and its first block's pend path points it, on the thread
 * (bt_gs_first), or gives the thread the slow path if the program holds gs already. */
void
bt_gs_decide (BtThread * t)
{
  t->gs = 2;
  if (bt_config.wrgs == NULL || bt_config.inline_paths || t->mode != 2 ||
      t->chunk != 65536 || t->capacity % t->chunk != 0 || t->reserved_end < t->chunk ||
      !bt_is_low (t))
    return;                           /* (emit.c: the code with a cursor is made then) */
  t->slow = bt_gs_slow;
  if ((guint32) syscall (186) != t->tid)                            /* gettid */
  {
    t->gs = 4;
    t->gs_skip = 1;
    t->nopend = 0;
    return;
  }
  if (!bt_gs_free (bt_config.rdgs ()) || !bt_gs_point (t))
  {
    t->slow = bt_stream_slow;
    return;
  }
  t->gs = 1;
}

/* The first block of a thread whose gs code was made on another thread (gs == 4), from
 * bt_flush_pending, on the thread. */
void
bt_gs_first (BtThread * t)
{
  if (bt_gs_free (bt_config.rdgs ()) && bt_gs_point (t))
  {
    t->gs = 1;
    t->gs_skip = 0;
    return;
  }
  t->gs = 1;                          /* the program's gs: as if it had just set it */
  bt_gs_taken (t);
}

/* Stream mode through gs: written % 65536 == 0, the record at `written` begins a chunk.
 * Reserve it (waiting while the consumer has not freed it: bt_stream_slow) unless it is
 * reserved already (at the thread's start, or a signal handler's record came first), and
 * point gs at it. */
void
bt_gs_slow (BtThread * t)
{
  volatile guint64 * e = t->entry;
  guint64 end = e[2] + t->chunk;

  g_atomic_int_add (&t->in_slow, 1);
  if (t->reserved_end != end)
  {
    /* bt_stream_slow reserves [reserved_end, reserved_end + chunk): here that is
     * [written, written + chunk) */
    t->reserved_end = end - t->chunk;
    bt_stream_slow (t);
  }
  if (t->gs == 1 && !bt_gs_point (t))   /* not once the program has its own (3) */
    bt_gs_taken (t);                  /* not seen: the same call worked at the start */
  g_atomic_int_add (&t->in_slow, -1);
}

/* The program is about to set the gs base of a thread whose block-start code stores
 * through gs (emit.c, bt_gs_guard). From the next block on, that code takes its pend
 * path for every block and bt_flush_pending stores the record in C (gs 3): correct,
 * and slow (a call per block); the tracer notes it (BT_EVENT_GS_LOST in the block
 * table's header, read by ending.py). Threads it makes inherit its gs and
 * keep their cursor (bt_gs_decide). */
void
bt_gs_taken (BtThread * t)
{
  if (t->gs != 1 && t->gs != 4)
    return;
  t->gs = 3;
  t->gs_skip = 1;
  t->nopend = 0;
  bt_config.table->events[BT_EVENT_GS_LOST] = 1;
}

