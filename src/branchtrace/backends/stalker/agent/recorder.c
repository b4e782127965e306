/*
 * branchtrace Stalker recorder, part 6 of 6: the transform that makes every block
 * record itself.
 *
 * Compiled inside the target by Frida's CModule (TinyCC). For each block Stalker
 * compiles, the transform
 *   1. takes a fresh 32-bit block id from the block table's counter,
 *   2. emits, before the block's first instruction, flag-free machine code that
 *      appends the id to this thread's region of the shared store and publishes the
 *      thread entry's `written` counter (docs/stalker.md, "The emitted code"),
 *   3. keeps every instruction unchanged, and
 *   4. writes the block's table entry (start, last instruction, end, kind, flags),
 *   5. emits a lookup in the thread's cache of blocks before a `ret` and an indirect
 *      call or jump (lookups.c, "Returns").
 *
 * Per-thread memory (one reservation, mapped by the agent):
 *
 *   [ region: region_bytes, MAP_SHARED on the store file       ]
 *   [ entry page: 4096, MAP_SHARED: the thread table page holding our entry ]
 *   [ BtThread: 4096, private ]   <- T, the only address baked into the code
 *
 * so everything the emitted code touches is T plus a 32-bit displacement, and the
 * only register it needs before it has saved one is rax (`mov [moffs64], rax`).
 */

static guint8
bt_classify (const cs_insn * insn)
{
  const cs_x86 * x = &insn->detail->x86;
  gboolean direct = x->op_count >= 1 && x->operands[0].type == X86_OP_IMM;

  switch (insn->id)
  {
    case X86_INS_CALL:
      return direct ? BT_CALL : BT_INDIRECT_CALL;
    case X86_INS_LCALL:
      return BT_INDIRECT_CALL;
    case X86_INS_RET: case X86_INS_RETF: case X86_INS_RETFQ:
    case X86_INS_IRET: case X86_INS_IRETD: case X86_INS_IRETQ:
      return BT_RETURN;
    case X86_INS_JMP:
      return direct ? BT_JUMP : BT_INDIRECT_JUMP;
    case X86_INS_LJMP:
      return BT_INDIRECT_JUMP;
    case X86_INS_JAE: case X86_INS_JA: case X86_INS_JBE: case X86_INS_JB:
    case X86_INS_JCXZ: case X86_INS_JECXZ: case X86_INS_JRCXZ: case X86_INS_JE:
    case X86_INS_JGE: case X86_INS_JG: case X86_INS_JLE: case X86_INS_JL:
    case X86_INS_JNE: case X86_INS_JNO: case X86_INS_JNP: case X86_INS_JNS:
    case X86_INS_JO: case X86_INS_JP: case X86_INS_JS:
    case X86_INS_LOOP: case X86_INS_LOOPE: case X86_INS_LOOPNE:
      return BT_COND;
    case X86_INS_SYSCALL: case X86_INS_SYSENTER:
    case X86_INS_INT: case X86_INS_INT3: case X86_INS_INTO:
      return BT_SYSCALL;
    default:
      return BT_OTHER;        /* Stalker split the block: it falls through */
  }
}

static gboolean
bt_in_ranges (guint64 address)
{
  guint32 lo = 0, hi = bt_config.nranges;

  if (hi == 0)
    return TRUE;
  while (lo < hi)
  {
    guint32 mid = (lo + hi) / 2;
    if (address < bt_config.ranges[2 * mid])
      hi = mid;
    else if (address >= bt_config.ranges[2 * mid + 1])
      lo = mid + 1;
    else
      return TRUE;
  }
  return FALSE;
}

/* Code outside every module is either the program's (JIT) or Frida's (the agent,
 * interceptor trampolines): the agent asks Frida's cloak, once per such block. */
static gboolean
bt_is_tool (BtThread * t, guint64 address)
{
  guint32 i;

  for (i = 0; i < bt_config.nours; i++)
  {
    if (address >= bt_config.ours[2 * i] && address < bt_config.ours[2 * i + 1])
      return TRUE;    /* a library only Frida's agent loaded: its code is Frida's */
  }
  if (bt_config.modules != NULL && gum_module_map_find (bt_config.modules, address) != NULL)
    return FALSE;
  if (t != NULL && t->shares_tls)
    return TRUE;    /* the cloak is asked in JS, which must not run in this thread: code
                     * outside every module is taken for Frida's (docs/stalker.md) */
  return bt_config.is_tool != NULL && bt_config.is_tool (address);
}

void
bt_update_modules (void)
{
  if (bt_config.modules == NULL)
    bt_config.modules = gum_module_map_new ();
  else
    gum_module_map_update (bt_config.modules);
}

void bt_gs_guard (GumX86Writer * cw, BtThread * t, gboolean unconditional);   /* emit.c */

/* Could `insn` set the thread's gs base? 1: a system call (arch_prctl, when rax and rdi
 * say so); 2: always (wrgsbase, a load of the gs selector); 0: no. */
static gint
bt_sets_gs (const cs_insn * insn)
{
  const cs_x86 * x = &insn->detail->x86;

  switch (insn->id)
  {
    case X86_INS_SYSCALL:
      return 1;
    case X86_INS_WRGSBASE: case X86_INS_LGS:
      return 2;
    case X86_INS_MOV: case X86_INS_POP:
      return (x->op_count >= 1 && x->operands[0].type == X86_OP_REG &&
              x->operands[0].reg == X86_REG_GS) ? 2 : 0;
    default:
      return 0;
  }
}

void
transform (GumStalkerIterator * iterator, GumStalkerOutput * output, gpointer user_data)
{
  BtThread * t = user_data;
  const cs_insn * insn;
  guint64 id = 0, start = 0, last = 0, end = 0;
  guint8 kind = BT_OTHER, flags = BT_FLAG_VALID;
  guint ninsn = 0;
  guint64 * site;
  BtStub stub = { NULL, 0, 0, 0, 0, 0, 0, 0 };

  bt_xstate_check (iterator);         /* xstate.c: before Stalker's helpers first run */
  while (gum_stalker_iterator_next (iterator, &insn))
  {
    if (ninsn == 0)
    {
      start = insn->address;
      id = (guint32) g_atomic_int_add (&bt_config.table->count, 1);
      if (!bt_in_ranges (start))
        flags |= BT_FLAG_FOREIGN;
      if (bt_is_tool (t, start) || (start == bt_config.restorer && start != 0))
        flags |= BT_FLAG_TOOL;        /* Frida's own code: never in the trace; nor is the
                                       * signal return trampoline (signals.c) */
      else if (bt_config.table->events[BT_EVENT_ANON_CODE] == 0 && bt_config.smc == 0 &&
               bt_config.modules != NULL &&
               gum_module_map_find (bt_config.modules, start) == NULL)
        bt_config.table->events[BT_EVENT_ANON_CODE] = 1;
      if (insn->id == X86_INS_JMP && insn->detail->x86.op_count == 1 &&
          insn->detail->x86.operands[0].type == X86_OP_IMM &&
          bt_is_tool (t, (guint64) insn->detail->x86.operands[0].imm))
        flags |= BT_FLAG_HOOKED;      /* an Interceptor hook: Frida's code runs next */
      if (t == NULL || id >= bt_config.table_capacity || (flags & BT_FLAG_TOOL) != 0 ||
          !emit_record (output->writer.x86, t, (guint32) id, &stub))
        flags |= BT_FLAG_UNRECORDED;
    }
    last = insn->address;
    end = insn->address + insn->size;
    kind = bt_classify (insn);
    ninsn++;
    if (kind != BT_OTHER && kind != BT_SYSCALL && (flags & BT_FLAG_UNRECORDED) == 0)
      emit_body_end (output->writer.x86);   /* Stalker's code for the branch comes next; a
                                              * system call's leaves the body as it was */
    if (insn->id == X86_INS_RET && t != NULL && t->retcache != NULL &&
        (flags & BT_FLAG_TOOL) == 0)
    {
      const cs_x86 * x = &insn->detail->x86;
      guint16 npop = (x->op_count == 1 && x->operands[0].type == X86_OP_IMM)
          ? (guint16) x->operands[0].imm : 0;
      emit_ret (output->writer.x86, t, npop);
    }
    else if ((insn->id == X86_INS_JMP || insn->id == X86_INS_CALL) && t != NULL &&
             t->retcache != NULL && (flags & BT_FLAG_TOOL) == 0 &&
             insn->detail->x86.op_count == 1 &&
             insn->detail->x86.operands[0].type != X86_OP_IMM)
    {
      emit_indirect (output->writer.x86, t, insn, insn->id == X86_INS_CALL);
    }
    if (t != NULL && (t->gs == 1 || t->gs == 4) && (flags & BT_FLAG_TOOL) == 0 &&
        bt_sets_gs (insn) != 0)
      bt_gs_guard (output->writer.x86, t, bt_sets_gs (insn) == 2);   /* emit.c */
    site = (insn->id == X86_INS_SYSCALL && t != NULL)
        ? bt_syscall_note (output->writer.x86, t) : NULL;   /* signals.c: Ctrl-C */
    gum_stalker_iterator_keep (iterator);
    if (site != NULL)
      bt_syscall_mark (output->writer.x86, site);
    if (insn->id == X86_INS_SYSCALL && t != NULL && (flags & BT_FLAG_TOOL) == 0)
      bt_emit_vfork_check (output->writer.x86, t, insn);   /* vfork.c */
    if (t != NULL && (flags & BT_FLAG_TOOL) == 0)
      bt_emit_acflag (output->writer.x86, t, insn);   /* acflag.c: after popfq, pushfq */
  }
  if (ninsn != 0 && (kind == BT_OTHER || kind == BT_SYSCALL) &&
      (flags & BT_FLAG_UNRECORDED) == 0)
    emit_body_end (output->writer.x86);  /* Stalker split the block: its jump comes next */
  if (t != NULL)
    emit_stub (output->writer.x86, t, &stub);   /* emit.c: the pend path, after the block */

  if (ninsn != 0 && id < bt_config.table_capacity)
  {
    BtBlock * b = &bt_config.blocks[id];
    b->start = start;
    b->last = last;
    b->end = end;
    b->kind = kind;
    b->ninsn = (guint16) MIN (ninsn, 0xffff);
    b->reserved = 0;
    b->flags = flags;                 /* last: the entry is complete */
  }
}

/* BRANCHTRACE_STALKER_VARIANT=follow and =stock (benchmarks): Stalker following, nothing
 * recorded; the same as Frida's default transform but for the AVX-512 fix (xstate.c). */
void
bt_transform_keep (GumStalkerIterator * iterator, GumStalkerOutput * output,
                   gpointer user_data)
{
  const cs_insn * insn;

  bt_xstate_check (iterator);
  while (gum_stalker_iterator_next (iterator, &insn))
    gum_stalker_iterator_keep (iterator);
}
