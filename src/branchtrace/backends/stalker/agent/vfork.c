/*
 * branchtrace Stalker recorder: a vfork child leaves Stalker at once (docs/stalker.md,
 * "vfork").
 */

/* A vfork child shares its parent's memory until it execs or exits, and so the
 * parent's Stalker code, its context and its record buffer: it went on in the parent's
 * code, and its branches (Python's subprocess closing descriptors, gdb's inferior
 * calling ptrace and execvp) were recorded as the parent thread's own, while it changed
 * Stalker's state under the suspended parent. Now the agent's probe on vfork arms T
 * (vfork_armed), and right after every `syscall` of a followed thread the code checks
 * it (two instructions when not armed: rcx is the kernel's return address there, no
 * register of the program's):
 *   mov rcx, [T+armed]; jrcxz done
 *   mov [T+vrax], rax; mov eax, gettid; syscall
 *   mov ecx, [T+tid]; not rcx; lea rcx, [rcx+rax+1]      (flag-free: tid now - T's)
 *   mov rax, [T+vrax]; jrcxz parent
 *   jmp [rip+0]; <the program's next instruction>        (the child, natively)
 *   parent: mov qword [T+armed], 0
 *   done:
 * The child runs natively from the instruction after its system call, as a child
 * does (nothing of it recorded; with children followed, it is followed from its exec);
 * the parent, back from vfork once the child is gone, disarms T and goes on. Flags are
 * the program's throughout (syscall and sysret keep them; mov, not, lea change none). */

#define OFF_VFORK_ARMED 4008
#define OFF_VFORK_RAX 4016
#define OFF_TID 92

static void
bt_put_abs (guint8 * b, guint * n, guint64 address)
{
  guint i;

  for (i = 0; i != 4; i++)
    b[(*n)++] = (guint8) (address >> (8 * i));
}

/* After a followed thread's `syscall` at `insn` (kept already, with its marker). */
void
bt_emit_vfork_check (GumX86Writer * cw, BtThread * t, const cs_insn * insn)
{
  guint8 b[96];
  guint n = 0, done_at, parent_at, i;
  guint64 T = GPOINTER_TO_SIZE (t), next = insn->address + insn->size;

  if (T + 4096 > BT_LOW_LIMIT)
    return;                           /* T above 2 GiB: no check (the child is recorded) */
  b[n++] = 0x48; b[n++] = 0x8b; b[n++] = 0x0c; b[n++] = 0x25;       /* mov rcx, [armed] */
  bt_put_abs (b, &n, T + OFF_VFORK_ARMED);
  b[n++] = 0xe3; done_at = n; b[n++] = 0;                           /* jrcxz done */
  b[n++] = 0x48; b[n++] = 0x89; b[n++] = 0x04; b[n++] = 0x25;       /* mov [vrax], rax */
  bt_put_abs (b, &n, T + OFF_VFORK_RAX);
  b[n++] = 0xb8; b[n++] = 186; b[n++] = 0; b[n++] = 0; b[n++] = 0;  /* mov eax, gettid */
  b[n++] = 0x0f; b[n++] = 0x05;                                     /* syscall */
  b[n++] = 0x8b; b[n++] = 0x0c; b[n++] = 0x25;                      /* mov ecx, [tid] */
  bt_put_abs (b, &n, T + OFF_TID);
  b[n++] = 0x48; b[n++] = 0xf7; b[n++] = 0xd1;                      /* not rcx */
  b[n++] = 0x48; b[n++] = 0x8d; b[n++] = 0x4c; b[n++] = 0x01; b[n++] = 0x01;  /* lea */
  b[n++] = 0x48; b[n++] = 0x8b; b[n++] = 0x04; b[n++] = 0x25;       /* mov rax, [vrax] */
  bt_put_abs (b, &n, T + OFF_VFORK_RAX);
  b[n++] = 0xe3; parent_at = n; b[n++] = 0;                         /* jrcxz parent */
  b[n++] = 0xff; b[n++] = 0x25; b[n++] = 0; b[n++] = 0; b[n++] = 0; b[n++] = 0;
  for (i = 0; i != 8; i++)                                          /* jmp [rip+0] */
    b[n++] = (guint8) (next >> (8 * i));
  b[parent_at] = (guint8) (n - (parent_at + 1));
  b[n++] = 0x48; b[n++] = 0xc7; b[n++] = 0x04; b[n++] = 0x25;       /* mov qword [armed], 0 */
  bt_put_abs (b, &n, T + OFF_VFORK_ARMED);
  b[n++] = 0; b[n++] = 0; b[n++] = 0; b[n++] = 0;
  b[done_at] = (guint8) (n - (done_at + 1));
  if (n != 76)
    return;                           /* crash.js (pastSyscallMarker) skips 76 bytes */
  gum_x86_writer_put_bytes (cw, b, n);
}
