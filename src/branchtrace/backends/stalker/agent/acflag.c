/*
 * branchtrace Stalker recorder: the alignment-check flag (EFLAGS.AC, bit 18), kept
 * virtual (docs/stalker.md, "The alignment-check flag").
 */

/* Linux lets user code set AC, and with it every misaligned access of that thread
 * faults. Programs set it only to see whether they can (the JVM's CPU probe: "if we are
 * unable to change the AC flag, we have a 386": popf with AC flipped, pushf, compare,
 * popf back, all aligned). Under Stalker the code between the two popf is not only the
 * program's: Stalker's own code for the block's branch, its C code compiling the next
 * block, Frida's exception handler, all run with AC set, fault on their first misaligned
 * access, and the program dies of SIGSEGV (every `java` did). So AC is kept in T
 * instead (vac: 0 or 0x40000) and never left set in the real flags:
 *   after a popfq:  vac = the flags' AC; AC cleared in the real flags
 *   after a pushfq: vac added to the word pushed (its AC is 0 by then)
 * No other flag changes: the popfq sequence ends with a popfq of the program's flags,
 * the pushfq one uses lea only. Neither touches the red zone (rsp goes 128 bytes down
 * first). What differs from native: misaligned accesses of the program with AC set do
 * not fault (nothing measured here relies on that), and a signal handler's ucontext
 * shows AC clear. */

#define OFF_VAC 4024

/* The two sequences, on emit.c's byte emitter: `mov rcx, T+vac` (movabs: T may be above
 * 2 GiB) between a head and a tail of fixed bytes. */
static void
bt_emit_around_vac (GumX86Writer * cw, BtThread * t, const guint8 * head, guint nhead,
                    const guint8 * tail, guint ntail)
{
  BtCode c;

  c.n = 0;
  c.tramp = 0;
  c.base = 0;
  en (&c, head, nhead);
  e1 (&c, 0x48); e1 (&c, 0xb9); e8 (&c, GPOINTER_TO_SIZE (t) + OFF_VAC);   /* mov rcx, imm64 */
  en (&c, tail, ntail);
  gum_x86_writer_put_bytes (cw, c.b, c.n);
}

/* lea rsp, [rsp-128]; pushfq; push rax; push rcx; mov rax, [rsp+16];
 * and eax, 0x40000; mov rcx, T+vac; mov [rcx], rax;
 * and qword [rsp+16], ~0x40000; pop rcx; pop rax; popfq; lea rsp, [rsp+128] */
static const guint8 bt_popf_head[] = {
  0x48, 0x8d, 0x64, 0x24, 0x80,                             /* lea rsp, [rsp-128] */
  0x9c, 0x50, 0x51,                                         /* pushfq; push rax; push rcx */
  0x48, 0x8b, 0x44, 0x24, 0x10,                             /* mov rax, [rsp+16] */
  0x25, 0x00, 0x00, 0x04, 0x00,                             /* and eax, 0x40000 */
};
static const guint8 bt_popf_tail[] = {
  0x48, 0x89, 0x01,                                         /* mov [rcx], rax */
  0x48, 0x81, 0x64, 0x24, 0x10, 0xff, 0xff, 0xfb, 0xff,     /* and qword [rsp+16], ~AC */
  0x59, 0x58, 0x9d,                                         /* pop rcx; pop rax; popfq */
  0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00,           /* lea rsp, [rsp+128] */
};

/* lea rsp, [rsp-128]; push rax; push rcx; mov rcx, T+vac; mov rcx, [rcx];
 * mov rax, [rsp+144]; lea rax, [rax+rcx]; mov [rsp+144], rax; pop rcx; pop rax;
 * lea rsp, [rsp+128] */
static const guint8 bt_pushf_head[] = {
  0x48, 0x8d, 0x64, 0x24, 0x80,                             /* lea rsp, [rsp-128] */
  0x50, 0x51,                                               /* push rax; push rcx */
};
static const guint8 bt_pushf_tail[] = {
  0x48, 0x8b, 0x09,                                         /* mov rcx, [rcx] */
  0x48, 0x8b, 0x84, 0x24, 0x90, 0x00, 0x00, 0x00,           /* mov rax, [rsp+144] */
  0x48, 0x8d, 0x04, 0x08,                                   /* lea rax, [rax+rcx] */
  0x48, 0x89, 0x84, 0x24, 0x90, 0x00, 0x00, 0x00,           /* mov [rsp+144], rax */
  0x59, 0x58,                                               /* pop rcx; pop rax */
  0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00,           /* lea rsp, [rsp+128] */
};

/* After the program's `insn` (kept already): keep AC virtual (above). */
void
bt_emit_acflag (GumX86Writer * cw, BtThread * t, const cs_insn * insn)
{
  if (insn->id == X86_INS_POPFQ)
    bt_emit_around_vac (cw, t, bt_popf_head, sizeof (bt_popf_head), bt_popf_tail,
                        sizeof (bt_popf_tail));
  else if (insn->id == X86_INS_PUSHFQ)
    bt_emit_around_vac (cw, t, bt_pushf_head, sizeof (bt_pushf_head), bt_pushf_tail,
                        sizeof (bt_pushf_tail));
}
