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

/* After a followed thread's `syscall` at `insn` (kept already, with its marker), on
 * emit.c's byte emitter (emit_abs: `prefix op modrm sib disp32`, an address below 2 GiB). */
void
bt_emit_vfork_check (GumX86Writer * cw, BtThread * t, const cs_insn * insn)
{
  BtCode c;
  guint done_at, parent_at;
  guint64 T = GPOINTER_TO_SIZE (t);

  if (T + 4096 > BT_LOW_LIMIT)
    return;                           /* T above 2 GiB: no check (the child is recorded) */
  c.n = 0;
  c.bad = FALSE;
  emit_abs (&c, 0x48, 0x8b, RCX, T + OFF_VFORK_ARMED);                  /* mov rcx, [armed] */
  e1 (&c, 0xe3); done_at = c.n; e1 (&c, 0);                             /* jrcxz done */
  emit_abs (&c, 0x48, 0x89, RAX, T + OFF_VFORK_RAX);                    /* mov [vrax], rax */
  e1 (&c, 0xb8); e4 (&c, 186);                                          /* mov eax, gettid */
  e1 (&c, 0x0f); e1 (&c, 0x05);                                         /* syscall */
  e1 (&c, 0x8b); e1 (&c, 0x0c); e1 (&c, 0x25); e4 (&c, (guint32) (T + OFF_TID));  /* mov ecx, [tid] */
  en (&c, (const guint8 []) { 0x48, 0xf7, 0xd1 }, 3);                  /* not rcx */
  en (&c, (const guint8 []) { 0x48, 0x8d, 0x4c, 0x01, 0x01 }, 5);      /* lea rcx, [rcx+rax+1] */
  emit_abs (&c, 0x48, 0x8b, RAX, T + OFF_VFORK_RAX);                    /* mov rax, [vrax] */
  e1 (&c, 0xe3); parent_at = c.n; e1 (&c, 0);                           /* jrcxz parent */
  en (&c, (const guint8 []) { 0xff, 0x25, 0, 0, 0, 0 }, 6);            /* jmp [rip+0] */
  e8 (&c, insn->address + insn->size);                                  /*   the next insn */
  patch_here (&c, parent_at);
  emit_abs (&c, 0x48, 0xc7, RAX, T + OFF_VFORK_ARMED);                  /* mov qword [armed], 0 */
  e4 (&c, 0);
  patch_here (&c, done_at);
  if (c.bad || c.n != 76)
    return;                           /* crash.js (pastSyscallMarker) skips 76 bytes */
  gum_x86_writer_put_bytes (cw, c.b, c.n);
}
