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

/* lea rsp, [rsp-128]; pushfq; push rax; push rcx; mov rax, [rsp+16];
 * and eax, 0x40000; mov rcx, T+vac; mov [rcx], rax;
 * and qword [rsp+16], ~0x40000; pop rcx; pop rax; popfq; lea rsp, [rsp+128] */
static void
bt_emit_after_popf (GumX86Writer * cw, BtThread * t)
{
  guint8 b[80];
  guint n = 0, i;
  guint64 vac = GPOINTER_TO_SIZE (t) + OFF_VAC;
  static const guint8 head[] = {
    0x48, 0x8d, 0x64, 0x24, 0x80,             /* lea rsp, [rsp-128] */
    0x9c, 0x50, 0x51,                         /* pushfq; push rax; push rcx */
    0x48, 0x8b, 0x44, 0x24, 0x10,             /* mov rax, [rsp+16] */
    0x25, 0x00, 0x00, 0x04, 0x00,             /* and eax, 0x40000 */
    0x48, 0xb9,                               /* mov rcx, imm64 */
  };
  static const guint8 tail[] = {
    0x48, 0x89, 0x01,                         /* mov [rcx], rax */
    0x48, 0x81, 0x64, 0x24, 0x10, 0xff, 0xff, 0xfb, 0xff,   /* and qword [rsp+16], ~AC */
    0x59, 0x58, 0x9d,                         /* pop rcx; pop rax; popfq */
    0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00,         /* lea rsp, [rsp+128] */
  };

  for (i = 0; i != sizeof (head); i++)
    b[n++] = head[i];
  for (i = 0; i != 8; i++)
    b[n++] = (guint8) (vac >> (8 * i));
  for (i = 0; i != sizeof (tail); i++)
    b[n++] = tail[i];
  gum_x86_writer_put_bytes (cw, b, n);
}

/* lea rsp, [rsp-128]; push rax; push rcx; mov rcx, T+vac; mov rcx, [rcx];
 * mov rax, [rsp+144]; lea rax, [rax+rcx]; mov [rsp+144], rax; pop rcx; pop rax;
 * lea rsp, [rsp+128] */
static void
bt_emit_after_pushf (GumX86Writer * cw, BtThread * t)
{
  guint8 b[80];
  guint n = 0, i;
  guint64 vac = GPOINTER_TO_SIZE (t) + OFF_VAC;
  static const guint8 head[] = {
    0x48, 0x8d, 0x64, 0x24, 0x80,             /* lea rsp, [rsp-128] */
    0x50, 0x51,                               /* push rax; push rcx */
    0x48, 0xb9,                               /* mov rcx, imm64 */
  };
  static const guint8 tail[] = {
    0x48, 0x8b, 0x09,                         /* mov rcx, [rcx] */
    0x48, 0x8b, 0x84, 0x24, 0x90, 0x00, 0x00, 0x00,         /* mov rax, [rsp+144] */
    0x48, 0x8d, 0x04, 0x08,                   /* lea rax, [rax+rcx] */
    0x48, 0x89, 0x84, 0x24, 0x90, 0x00, 0x00, 0x00,         /* mov [rsp+144], rax */
    0x59, 0x58,                               /* pop rcx; pop rax */
    0x48, 0x8d, 0xa4, 0x24, 0x80, 0x00, 0x00, 0x00,         /* lea rsp, [rsp+128] */
  };

  for (i = 0; i != sizeof (head); i++)
    b[n++] = head[i];
  for (i = 0; i != 8; i++)
    b[n++] = (guint8) (vac >> (8 * i));
  for (i = 0; i != sizeof (tail); i++)
    b[n++] = tail[i];
  gum_x86_writer_put_bytes (cw, b, n);
}

/* After the program's `insn` (kept already): keep AC virtual (above). */
void
bt_emit_acflag (GumX86Writer * cw, BtThread * t, const cs_insn * insn)
{
  if (insn->id == X86_INS_POPFQ)
    bt_emit_after_popf (cw, t);
  else if (insn->id == X86_INS_PUSHFQ)
    bt_emit_after_pushf (cw, t);
}
