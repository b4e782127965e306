/*
 * branchtrace Stalker recorder, part 5 of 6: signal handlers (docs/stalker.md,
 * "Signal handlers").
 */

/* Signal handlers run outside Stalker's code (the kernel enters them directly), so their
 * inside is not recorded; their entry and return are. Each wrapped handler has a
 * synthetic block (start = the handler, kind RETURN, flag ASYNC): decode makes the
 * transition into it an INTERRUPT and the one out of it a RETURN. After the handler,
 * the interrupted block's id is appended again: the thread goes on inside it. */

void
bt_register_thread (BtThread * t)
{
  guint32 i = t->tid % BT_THREAD_SLOTS, n;

  for (n = 0; n != BT_THREAD_SLOTS; n++, i = (i + 1) % BT_THREAD_SLOTS)
  {
    if (bt_config.threads[i] == NULL || bt_config.threads[i]->tid == t->tid)
    {
      bt_config.threads[i] = t;
      return;
    }
  }
}

static BtThread *
bt_current_thread (void)
{
  guint32 tid = (guint32) syscall (186);   /* gettid */
  guint32 i = tid % BT_THREAD_SLOTS, n;

  for (n = 0; n != BT_THREAD_SLOTS; n++, i = (i + 1) % BT_THREAD_SLOTS)
  {
    BtThread * t = bt_config.threads[i];
    if (t == NULL)
      return NULL;
    if (t->tid == tid)
      return t;
  }
  return NULL;
}

/* What the emitted code does, in C (the thread is not running it: it is in a handler). */
static void
bt_append (BtThread * t, guint32 id)
{
  volatile guint64 * e = t->entry;
  guint64 w = e[2];

  if (t->mode == 1)
  {
    guint64 slot;
    if (t->ring_pow2 == 16 || (t->ring_pow2 != 0 && bt_config.use_bmi2))
    {
      slot = w & (t->capacity - 1);
    }
    else
    {
      slot = (guint64) (t->cursor + (gint64) t->capacity);
      t->cursor = (slot + 1 == t->capacity) ? -(gint64) t->capacity : t->cursor + 1;
    }
    t->region[slot] = id;
    e[2] = w + 1;
    return;
  }
  if (t->gs == 1 || t->gs == 3 || t->gs == 4)   /* emit.c, build_stream_gs */
  {
    if (w % 65536 == 0)
      ((void (*) (BtThread *)) t->slow) (t);
    t->region[(w - w % 65536) % t->capacity + w % 65536] = id;
    e[2] = w + 1;
    return;
  }
  if (t->cursor == 0)
    ((void (*) (BtThread *)) t->slow) (t);
  ((guint32 *) GSIZE_TO_POINTER (t->chunk_end))[t->cursor] = id;
  t->cursor++;
  e[2] = w + 1;
  if (t->cursor == 0)
    ((void (*) (BtThread *)) t->slow) (t);
}

static guint32
bt_last_id (BtThread * t)
{
  guint64 w = t->entry[2];

  return (w == 0) ? BT_NO_ID : t->region[(w - 1) % t->capacity];
}

/* The start address of the block the thread recorded last (0: none, or not known yet):
 * detach.js, unstickLoops. */
guint64
bt_newest_block (BtThread * t)
{
  guint32 id = bt_last_id (t);

  return (id >= bt_config.table_capacity) ? 0 : bt_config.blocks[id].start;
}

/* Leave `id` for the thread's next block to append (a handler must not touch the
 * buffer: the thread may be in the middle of the emitted code). */
static void
bt_leave_pending (BtThread * t, guint32 id)
{
  gint n = t->npending;
  if (n < 32)
  {
    t->pending[n] = id;
    t->pending_reps[n] = 0;
    t->npending = n + 1;
  }
  t->nopend = 0;
}

static void bt_cache_put (BtThread * t, guint64 real, guint64 code);
void bt_gs_taken (BtThread * t);   /* thread.c */
void bt_gs_first (BtThread * t);   /* thread.c */

/* Called from the first instructions of block `id`, whose code starts at `code`, when
 * nopend is 0: put the block in the cache if the last cache miss wanted it (lookups.c,
 * "Returns"); append what signal handlers left, with signals blocked meanwhile. */
void
bt_flush_pending (BtThread * t, guint32 id, guint64 code)
{
  guint64 all = ~(guint64) 0, old = 0, want = t->want;
  gint i;

  if (t->rz_addr != 0)                /* bt_fault_entry's way back into Stalker */
  {
    *(guint64 *) GSIZE_TO_POINTER (t->rz_addr) = t->rz_saved;
    t->rz_addr = 0;
  }
  if (id == BT_GS_TAKEN)              /* emit.c, bt_gs_guard: not a block */
  {
    bt_gs_taken (t);
    return;
  }
  if (t->gs == 4)                     /* thread.c, bt_gs_decide: on the thread at last */
    bt_gs_first (t);
  if (want != BT_RC_EMPTY)
  {
    t->want = BT_RC_EMPTY;
    if (t->retcache != NULL && id < bt_config.table_capacity &&
        bt_config.blocks[id].start == want)
      bt_cache_put (t, want, code);
  }
  if (t->npending == 0 && t->gs != 3)
  {
    t->nopend = 1;
    if (t->npending != 0)           /* a handler left records meanwhile: see them next */
      t->nopend = 0;
    return;
  }
  syscall (14, 0, &all, &old, 8);       /* rt_sigprocmask (SIG_BLOCK) */
  for (i = 0; i < t->npending; i++)
  {
    guint32 r;

    bt_append (t, t->pending[i]);
    for (r = (i > 0) ? t->pending_reps[i] : 0; r != 0; r--)
    {
      bt_append (t, t->pending[i - 1]);
      bt_append (t, t->pending[i]);
    }
    t->pending_reps[i] = 0;
  }
  t->npending = 0;
  t->nopend = 1;
  if (t->gs == 3)                     /* the program took gs (thread.c, bt_gs_taken) */
  {
    if (t->check != NULL)
      (*t->check)++;                  /* the block-start code's test counter, skipped too */
    bt_append (t, id);                /* what the block-start code would store (emit.c) */
    t->nopend = 0;                    /* and so for every block from now on */
  }
  syscall (14, 2, &old, NULL, 8);       /* rt_sigprocmask (SIG_SETMASK) */
}

/* Could a handler run under Stalker, and append to the buffer, with the thread stopped at
 * `pc` (docs/stalker.md, "Signal handlers")? Yes when nothing of ours or of Stalker's is
 * half done there: in the program's own instructions of a block's body (up to and
 * including the point right after the body's end marker, before Stalker's code for the
 * branch), and in the parts of a block's start code that only save or restore registers
 * (the caller saves and restores those slots around the handler); not where that code
 * reads and writes the cursor and `written`, nor in its pend and slow paths, nor in our
 * cache lookups, nor in Stalker's transfer code or C code. The code of ours before `pc`
 * says where it is: the scan goes back from `pc` to the nearest block start
 * (`mov [T], rax; mov rax, T`), body end (`nop dword [rax+marker]`) or lookup
 * (`mov [T], rax; lahf`), within 8 KiB of mapped memory; nothing at or after `pc` is read
 * (it may be the end of the mapping). */
/* `off` bytes into a block's start code: only saving or restoring registers there, or
 * past it in the body? */
static gboolean
bt_safe_offset (BtThread * t, guint64 off)
{
  return off < t->seq_lo || (off >= t->seq_hi && off < t->seq_jend) || off >= t->record_len;
}

static gboolean
bt_safe_point (BtThread * t, guint64 pc)
{
  guint64 T = GPOINTER_TO_SIZE (t), a, page = pc & ~(guint64) 0xfff;
  guint8 vec;

  if (pc < 8192 + 32 || t->record_len == 0)
    return FALSE;
  for (a = pc - 7; a + 8192 > pc; a--)
  {
    const guint8 * p = (const guint8 *) GSIZE_TO_POINTER (a);

    if (a < page)
    {
      page -= 0x1000;
      if (syscall (27, GSIZE_TO_POINTER (page), 0x1000, &vec) != 0)   /* mincore */
        return FALSE;
    }
    if (p[0] == 0x0f && p[1] == 0x1f && p[2] == 0x80 &&
        *(const guint32 *) (p + 3) == bt_config.marker)
      return a + 7 == pc;             /* right after the body's end, or past it */
    if (a + 8 <= pc && p[0] == 0x48 && p[1] == 0x89 && p[2] == 0x0c && p[3] == 0x25 &&
        T < BT_LOW_LIMIT && *(const guint32 *) (p + 4) == (guint32) (T + OFF_SAVE_RCX))
      return bt_safe_offset (t, pc - a);   /* a block start below 2 GiB (emit_enter_low) */
    if (a + 20 <= pc && p[0] == 0x48 && p[1] == 0xa3 &&
        *(const guint64 *) (p + 2) == T + OFF_SAVE_RAX)
    {
      if (p[10] != 0x48 || p[11] != 0xb8 || *(const guint64 *) (p + 12) != T)
        return FALSE;                 /* in a cache lookup */
      return bt_safe_offset (t, pc - a);
    }
  }
  return FALSE;
}

/* A signal arrived at a safe point of a followed thread: enter the handler through
 * Stalker (the stub pushes the handler as a return address and runs one of the thread's
 * `ret` lookups, which misses: Stalker's own ret takes the thread to the handler, under
 * Stalker), recording its blocks like any others, after the synthetic block that makes
 * the entry an INTERRUPT. Back here (under Stalker now, as Frida's code: unrecorded), the
 * block the thread was in is appended again: the return from the handler goes back to
 * it. The registers the thread's code keeps in T are put back. TRUE if it ran. */
static gboolean
bt_run_under_stalker (BtThread * t, BtSignal * s, int sig, gpointer info, gpointer uctx)
{
  guint64 pc, rax, rcx, rdx, fl, tg;
  guint32 interrupted;

  if (bt_config.enter == NULL || t->any_ret_code == 0 || t->npending != 0 || !t->nopend ||
      bt_config.abort || t->in_slow || uctx == NULL)
    return FALSE;
  pc = ((const guint64 *) uctx)[5 + 16];          /* uc_mcontext.gregs[REG_RIP] */
  if (!bt_safe_point (t, pc))
    return FALSE;
  rax = t->save_rax; rcx = t->save_rcx; rdx = t->save_rdx;
  fl = t->save_flags; tg = t->save_target;
  interrupted = bt_last_id (t);
  bt_append (t, s->block);
  ((void (*) (int, gpointer, gpointer, gpointer, guint64)) bt_config.enter) (sig, info, uctx,
      s->handler, t->any_ret_code);
  if (interrupted != BT_NO_ID)
    bt_append (t, interrupted);
  t->save_rax = rax; t->save_rcx = rcx; t->save_rdx = rdx;
  t->save_flags = fl; t->save_target = tg;
  return TRUE;
}

static void bt_call_handler (BtSignal * s, int sig, gpointer info, gpointer uctx);

/* A signal for the process (not sent to one thread: si_code is not SI_TKILL) that the
 * kernel gave one of Frida's threads (it picks a thread that does not block the signal,
 * the main thread first unless that one is busy: in a handler, which takes a while under
 * Stalker, or with a signal already pending). Natively a thread of the program would
 * have taken it, at once or once it unblocked it; the program's handler
 * must not run on Frida's thread (unrecorded, and a handler may longjmp or use its
 * thread's state). Block it in this thread for good (the mask rt_sigreturn puts back is
 * the frame's) and send it to the process again: it waits until a thread of the program
 * unblocks it, as natively (with si_code SI_USER: the original siginfo cannot be sent
 * again from another thread). TRUE if it did. */
static gboolean
bt_redirect (int sig, gpointer info, gpointer uctx)
{
  guint32 tid, i, n = bt_config.ntools;
  glong pid;

  if (uctx == NULL || info == NULL || ((const gint32 *) info)[2] == -6)   /* SI_TKILL */
    return FALSE;
  tid = (guint32) syscall (186);                   /* gettid */
  for (i = 0; i < n && i < BT_TOOL_SLOTS; i++)
    if (bt_config.tools[i] == tid)
      break;
  if (i == n || i == BT_TOOL_SLOTS)
    return FALSE;                                  /* not known to be Frida's */
  pid = syscall (39);                              /* getpid */
  ((guint64 *) uctx)[37] |= (guint64) 1 << (sig - 1);   /* uc_sigmask */
  syscall (62, pid, sig);                          /* kill */
  return TRUE;
}

/* A handler run natively, recorded through `pending` (the next block appends it): its
 * synthetic block now; the id the thread was in, which the caller leaves pending again
 * after the handler (the thread goes on inside it), is returned. */
static guint32
bt_pend_handler (BtThread * t, guint32 block)
{
  guint32 interrupted = (t->npending > 0) ? t->pending[t->npending - 1] : bt_last_id (t);

  bt_leave_pending (t, block);
  return interrupted;
}

/* The handler the kernel calls for every signal whose handler we wrapped (SA_SIGINFO).
 * At an unsafe point the handler runs natively and leaves its synthetic block and the
 * interrupted block's id pending; a delivery that would leave the same pair as the last
 * one only counts it (pending_reps), so that a thread held up for long, say waiting for a
 * free chunk while a timer fires every millisecond, loses none of its deliveries. */
void
bt_signal_entry (int sig, gpointer info, gpointer uctx)
{
  BtSignal * s;
  BtThread * t;
  guint32 interrupted = BT_NO_ID;

  if (sig <= 0 || sig >= BT_NSIG)
    return;
  s = &bt_config.signals[sig];
  t = bt_current_thread ();
  if (t == NULL && bt_redirect (sig, info, uctx))
    return;
  if (s->block == 0)
    t = NULL;
  if (t != NULL && bt_run_under_stalker (t, s, sig, info, uctx))
    return;
  if (t != NULL)
  {
    gint n = t->npending;

    if (n >= 2 && t->pending[n - 2] == s->block)
    {
      /* It would leave (s->block, pending[n - 1]): the last pair again (a thread held
       * up, say waiting for a free chunk under a fast timer, gets one delivery after the
       * other at the same place). Count it; the flush appends the pair once more per
       * count, right after it (before what a delivery nested in this handler leaves,
       * which would otherwise come first: the only difference). */
      if (t->pending_reps[n - 1] != 0xffffffffU)
        t->pending_reps[n - 1]++;
      t->nopend = 0;
      bt_call_handler (s, sig, info, uctx);
      return;
    }
    interrupted = bt_pend_handler (t, s->block);
  }
  bt_call_handler (s, sig, info, uctx);
  if (t != NULL && interrupted != BT_NO_ID)
    bt_leave_pending (t, interrupted);
}

/* The handler the kernel's fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE) reach when the
 * program has its own: Frida's exceptor calls it after the agent's exception handler
 * (crash.js), which put where the thread really was in T (fault_real: the program's
 * instruction whose copy in Stalker's code faulted at fault_stalker). A handler that
 * reads the pc (the JVM's, which knows where its own faults are and moves the pc on)
 * sees the program's: the real pc goes into the context for it (docs/stalker.md,
 * "Faults the program handles"). After it:
 * - the pc unchanged: the thread goes on at the copy in Stalker's code (the
 *   instruction again, as natively: a handler that made the page readable);
 * - the pc moved (to X): into Stalker at X through one of the thread's `ret` lookups,
 *   with X pushed where the stack's next word goes (the red zone: the word is kept in
 *   T and put back by the next block, X's, before anything of the program runs);
 * - no real pc known: the context is left alone, as before.
 * Recorded as a signal at an unsafe point: the handler's synthetic block, then the
 * block the thread was in again (or, the pc moved, X's block next). */
void
bt_fault_entry (int sig, gpointer info, gpointer uctx)
{
  BtSignal * s;
  BtThread * t;
  guint64 * g = (uctx != NULL) ? (guint64 *) uctx + 5 : NULL;   /* uc_mcontext.gregs */
  guint64 real = 0, copy = 0, slot;
  guint32 interrupted = BT_NO_ID;

  if (sig <= 0 || sig >= BT_NSIG)
    return;
  s = &bt_config.signals[sig];
  t = bt_current_thread ();
  if (t != NULL)
  {
    if (g != NULL && t->fault_real != 0 && t->fault_stalker == g[16])   /* REG_RIP */
    {
      real = t->fault_real;
      copy = t->fault_stalker;
      g[16] = real;
    }
    t->fault_real = 0;
    t->fault_stalker = 0;
    if (s->block != 0)
      interrupted = bt_pend_handler (t, s->block);
  }
  bt_call_handler (s, sig, info, uctx);
  if (t == NULL)
    return;
  if (real == 0 || g[16] == real)
  {
    if (real != 0)
      g[16] = copy;
    if (interrupted != BT_NO_ID)
      bt_leave_pending (t, interrupted);
    return;
  }
  if (t->any_ret_code == 0)
    return;                           /* it leaves Stalker at X: untraced from there */
  slot = g[15] - 8;                   /* REG_RSP */
  t->rz_saved = *(guint64 *) GSIZE_TO_POINTER (slot);
  *(guint64 *) GSIZE_TO_POINTER (slot) = g[16];
  t->rz_addr = slot;
  t->nopend = 0;
  g[15] = slot;
  g[16] = t->any_ret_code;
}

static void
bt_call_handler (BtSignal * s, int sig, gpointer info, gpointer uctx)
{
  if (s->siginfo)
    ((void (*) (int, gpointer, gpointer)) s->handler) (sig, info, uctx);
  else
    ((void (*) (int)) s->handler) (sig);
}

/* A synthetic block for a handler: its id. */
guint32
bt_signal_block (gpointer handler)
{
  guint64 id = (guint32) g_atomic_int_add (&bt_config.table->count, 1);
  BtBlock * b;

  if (id >= bt_config.table_capacity)
    return 0;
  b = &bt_config.blocks[id];
  b->start = GPOINTER_TO_SIZE (handler);
  b->last = GPOINTER_TO_SIZE (handler);
  b->end = GPOINTER_TO_SIZE (handler);
  b->kind = BT_RETURN;
  b->ninsn = 0;
  b->reserved = 0;
  b->flags = BT_FLAG_VALID | BT_FLAG_ASYNC;
  return (guint32) id;
}

/* A fault in Stalker's code while it read the code at a branch target (crash.js,
 * realFault): natively the branch was taken and the fetch at `target` faulted. Record
 * the block the thread was entering (nothing of it ran), so that the trace ends with
 * that branch as ptrace's does. The thread is in Frida's code, not in a block's record
 * sequence: appending is safe. */
void
bt_crash_target (gpointer at)
{
  guint64 target = GPOINTER_TO_SIZE (at);
  BtThread * t = bt_current_thread ();
  guint64 id;
  BtBlock * b;

  if (t == NULL)
    return;
  id = (guint32) g_atomic_int_add (&bt_config.table->count, 1);
  if (id >= bt_config.table_capacity)
    return;
  b = &bt_config.blocks[id];
  b->start = target;
  b->last = target;
  b->end = target;
  b->kind = BT_OTHER;
  b->ninsn = 0;
  b->reserved = 0;
  b->flags = BT_FLAG_VALID;
  bt_append (t, (guint32) id);
}

/* System calls a swallowed Ctrl-C cut short (docs/stalker.md, "Ctrl-C"). bt_sigint is a
 * handler, and a handler that runs makes the kernel end some calls with EINTR even with
 * SA_RESTART (nanosleep, poll, select, epoll_wait, pause, futex waits with a timeout):
 * natively the program would have died of the signal, not seen EINTR. So each system
 * call site compiled for a followed thread notes the call's number in a slot of its
 * own (`movabs [slot], rax` before the call: no register, no flag), and is followed by
 * a marker that names the slot (`jmp +12; marker32; slot64`, jumped over). A call that
 * returned -EINTR at a marked site is issued again when bt_sigint returns: pc back onto
 * the `syscall`, rax = the number, the arguments still in their registers. A relative
 * timeout starts over. Sites past BT_SITES per thread are not marked. */
guint64 *
bt_syscall_note (GumX86Writer * cw, BtThread * t)
{
  guint64 * slot;
  guint64 where;
  guint8 code[10] = { 0x48, 0xa3 };
  guint i;

  if (t->nsites >= BT_SITES)
    return NULL;
  slot = &t->sites[t->nsites++];
  where = GPOINTER_TO_SIZE (slot);
  for (i = 0; i < 8; i++)
    code[2 + i] = (guint8) (where >> (8 * i));
  gum_x86_writer_put_bytes (cw, code, sizeof (code));
  return slot;
}

/* Right after Stalker's `syscall` (gum_stalker_iterator_keep put it last). */
void
bt_syscall_mark (GumX86Writer * cw, guint64 * slot)
{
  guint8 code[14] = { 0xeb, 12 };
  guint64 where = GPOINTER_TO_SIZE (slot);
  guint i;

  for (i = 0; i < 4; i++)
    code[2 + i] = (guint8) (bt_config.marker >> (8 * i));
  for (i = 0; i < 8; i++)
    code[6 + i] = (guint8) (where >> (8 * i));
  gum_x86_writer_put_bytes (cw, code, sizeof (code));
}

static void
bt_reissue (gpointer uctx)
{
  guint64 * gregs = (guint64 *) uctx + 5;        /* uc_mcontext.gregs */
  const guint8 * pc = GSIZE_TO_POINTER (gregs[16]);   /* REG_RIP */
  guint32 marker = 0;
  guint64 where = 0;
  guint i;

  if ((gint64) gregs[13] != -4 || (GPOINTER_TO_SIZE (pc) & 0xfff) < 2)  /* rax: -EINTR */
    return;
  if (pc[-2] != 0x0f || pc[-1] != 0x05 || pc[0] != 0xeb || pc[1] != 12)
    return;
  for (i = 0; i < 4; i++)
    marker |= (guint32) pc[2 + i] << (8 * i);
  for (i = 0; i < 8; i++)
    where |= (guint64) pc[6 + i] << (8 * i);
  if (marker != bt_config.marker || where == 0)
    return;
  gregs[16] -= 2;
  gregs[13] = *(const guint64 *) GSIZE_TO_POINTER (where);
}

/* SIGINT while the program has SIG_DFL for it (docs/stalker.md, "Ctrl-C"). A terminal's
 * Ctrl-C reaches the whole process group: branchtrace, which detaches, and the program,
 * which must go on, as under the ptrace backend. Wait (up to 1 s) for the tracer's word
 * that it was interrupted: then the signal was the user's Ctrl-C, and it is swallowed
 * (once: a second Ctrl-C kills the program, as it would without us). Otherwise do what SIG_DFL does: restore it and raise the signal again (blocked
 * while we are in the handler, it is delivered when we return: the program dies of it). */
void
bt_sigint (int sig, gpointer info, gpointer uctx)
{
  glong pid = syscall (39);                        /* getpid */
  guint i;
  struct { gpointer handler; gulong flags; gpointer restorer; guint64 mask; } dfl;

  if (bt_current_thread () == NULL && bt_redirect (sig, info, uctx))
    return;                                        /* a thread of Frida's got it */
  g_atomic_int_add (&bt_config.in_sigint, 1);
  for (i = 0; i < 200 && !bt_config.interrupted; i++)
    g_usleep (5000);
  /* the one Ctrl-C that was for branchtrace: 1 -> 2 (the agent writes 1 once, never
   * 0); a second one kills, as natively */
  if (bt_config.interrupted == 0 || g_atomic_int_add (&bt_config.interrupted, 1) != 1)
  {
    dfl.handler = NULL;
    dfl.flags = 0;
    dfl.restorer = NULL;
    dfl.mask = 0;
    syscall (13, sig, &dfl, NULL, 8);              /* rt_sigaction (SIG_DFL) */
    syscall (62, pid, sig);                        /* kill */
  }
  else
    bt_reissue (uctx);                             /* no EINTR the program would not see */
  g_atomic_int_add (&bt_config.in_sigint, -1);
}

/* execve's entry and (failed) exit, C listeners (agent.js, followExec): the agent is
 * called only in the traced process; in a forked child about to exec, no JS. */
extern volatile gint bt_agent_pid;          /* the traced process (agent.js writes it) */
extern void bt_exec_enter (gpointer path);
extern void bt_exec_failed (gint err);

static gboolean
bt_in_traced_process (void)
{
  return syscall (39) == bt_agent_pid;                        /* getpid */
}

void
bt_exec_on_enter (GumInvocationContext * ic)
{
  if (bt_in_traced_process ())
    bt_exec_enter (gum_invocation_context_get_nth_argument (ic, 0));
}

void
bt_exec_on_leave (GumInvocationContext * ic)
{
  if (bt_in_traced_process ())
    bt_exec_failed (ic->system_error);
}

/* _exit's entry (attach: agent.js, hookExit): the code reported, in the traced process
 * only; a forked child runs no JS. */
extern void bt_exit_enter (gint code);

void
bt_exit_on_enter (GumInvocationContext * ic)
{
  if (bt_in_traced_process ())
    bt_exit_enter ((gint) GPOINTER_TO_SIZE (gum_invocation_context_get_nth_argument (ic, 0)));
}

/* __call_tls_dtors' exit (agent.js, refollowAfterTlsDtors): the agent is called only in
 * the traced process; a forked child runs no JS. */
extern void bt_tls_dtors_left (void);

void
bt_tls_dtors_on_leave (GumInvocationContext * ic)
{
  if (bt_in_traced_process ())
    bt_tls_dtors_left ();
}

/* Crash facts (docs/stalker.md, "Where the fault really was"). Frida's handler for
 * SIGSEGV and SIGBUS (its exceptor, which calls the agent's onException) runs on the
 * faulting thread's stack: after a stack overflow the kernel cannot deliver it and the
 * program dies without a word. The handler is made SA_ONSTACK and every followed thread
 * gets an alternate signal stack, unless it has one of its own. */
#define BT_ALTSTACK_BYTES (256 * 1024)

/* A system call with the instruction itself: a clone child runs bt_altstack natively
 * while its parent has it followed, and libc's syscall() would then be recorded. */
static glong
bt_raw_syscall (glong nr, glong a, glong b, glong c, glong d, glong e, glong f)
{
  glong r;
  register glong r10 __asm__ ("r10") = d;
  register glong r8 __asm__ ("r8") = e;
  register glong r9 __asm__ ("r9") = f;

  __asm__ volatile ("syscall" : "=a" (r)
      : "0" (nr), "D" (a), "S" (b), "d" (c), "r" (r10), "r" (r8), "r" (r9)
      : "rcx", "r11", "memory");
  return r;
}

void
bt_altstack (void)
{
  struct { gpointer sp; gint flags; gsize size; } old, ss;
  glong p;

  if (bt_raw_syscall (131, 0, (glong) &old, 0, 0, 0, 0) != 0 || (old.flags & 2) == 0)
    return;                           /* sigaltstack: the thread has one (not SS_DISABLE) */
  p = bt_raw_syscall (9, 0, BT_ALTSTACK_BYTES, 3, 0x22 | 0x4000, -1, 0);
  if (p < 0 && p > -4096)             /* mmap: RW, PRIVATE | ANONYMOUS | NORESERVE */
    return;
  ss.sp = GSIZE_TO_POINTER ((gsize) p);
  ss.flags = 0;
  ss.size = BT_ALTSTACK_BYTES;
  bt_raw_syscall (131, (glong) &ss, 0, 0, 0, 0, 0);
}

/* Add SA_ONSTACK to the kernel's action for `sig` (Frida's handler), with the system
 * call: sigaction() itself is Frida's replacement, which keeps the program's actions. */
int
bt_onstack (int sig)
{
  struct { gpointer handler; gulong flags; gpointer restorer; guint64 mask; } act;

  if (syscall (13, sig, NULL, &act, 8) != 0 || act.handler == NULL ||
      act.handler == GSIZE_TO_POINTER (1))
    return 0;
  act.flags |= 0x08000000;                                       /* SA_ONSTACK */
  return syscall (13, sig, &act, NULL, 8) == 0;
}

/* A child of glibc's clone() starts here instead of in its start routine (agent.js,
 * followCloneChildren). It waits, natively, until the parent has had it followed (or
 * given up): `ready`. Then, now under Stalker, it says so (`entered`) and waits for
 * `go`: meanwhile the parent puts back the thread-specific values that Stalker's setup
 * of this thread overwrote (the child shares the parent's thread pointer). Then it runs
 * its routine. */
typedef struct
{
  gpointer fn;
  gpointer arg;
  volatile gint ready;
  volatile gint entered;
  volatile gint go;
} BtCloneGate;

/* sched_yield with the instruction itself: a call of libc's syscall() would be
 * recorded once the child runs under Stalker */
static void
bt_yield (void)
{
  long r;
  __asm__ volatile ("syscall" : "=a" (r) : "0" (24L) : "rcx", "r11", "memory");
}

int
bt_clone_gate (BtCloneGate * g)
{
  bt_altstack ();
  while (!g->ready)
    bt_yield ();
  if (g->ready == 1)
  {
    g_atomic_int_add (&g->entered, 1);
    while (!g->go)
      bt_yield ();
  }
  return ((int (*) (gpointer)) g->fn) (g->arg);
}

/* The parent's pthread-specific values (keys 0 to BT_PTHREAD_KEYS - 1), before it has
 * the child followed; put back those that changed once the child is in (agent.js,
 * followCloneChildren). */
#define BT_PTHREAD_KEYS 1024
extern gpointer pthread_getspecific (guint key);
extern int pthread_setspecific (guint key, gconstpointer value);

void
bt_clone_keys_save (gpointer * values)
{
  guint k;

  for (k = 0; k < BT_PTHREAD_KEYS; k++)
    values[k] = pthread_getspecific (k);
}

void
bt_clone_keys_restore (gpointer * values)
{
  guint k;

  for (k = 0; k < BT_PTHREAD_KEYS; k++)
  {
    if (pthread_getspecific (k) != values[k])
      pthread_setspecific (k, values[k]);
  }
}

/* The parent's side: wait (natively, at most ~2 s) until the child is in. */
int
bt_clone_wait_entered (BtCloneGate * g)
{
  guint i;

  for (i = 0; i < 200000; i++)
  {
    if (g->entered)
      return 1;
    if (i > 1000)
      g_usleep (10);
    else
      syscall (24);
  }
  return 0;
}
