/*
 * branchtrace Stalker agent, part 3 of 6: a fatal exception, reported before the
 * program dies of it, with where the faulting thread really was (docs/stalker.md,
 * "Where the fault really was").
 */

/* Where a thread really was: the last block it recorded (under Stalker the pc of a
 * fault is in Stalker's code slab, not in the program). */
function lastBlockOf(tid) {
  const t = followed.get(tid);
  if (t === undefined)
    return null;
  const entry = t.ctx.add(TH.entry).readPointer();
  const region = t.ctx.add(TH.region).readPointer();
  const capacity = t.ctx.add(TH.capacity).readU64().toNumber();
  const written = entry.add(16).readU64();
  if (written.equals(0))
    return null;
  const slot = written.sub(1).toNumber() % capacity;
  const id = region.add(4 * slot).readU32();
  if (id >= params.tableCapacity)
    return null;
  const b = tablePtr.add(64 + 32 * id);
  return { id: id, start: b.readU64().toString(), last: b.add(8).readU64().toString(),
           end: b.add(16).readU64().toString(), kind: b.add(24).readU8() };
}

/* The instruction of the block whose bytes the faulting slab instruction has: Stalker
 * copies most instructions unchanged, in order. When several instructions have those
 * bytes (`mov rax, [rax]` twice in a block), the one whose neighbours match the slab's
 * bytes around `pc` furthest, before and after, is it. null when none matches, or when
 * two match equally far. */
function matchInstruction(block, pc) {
  const insns = instructionsOf(block);
  const same = (insn, at) => {
    try {
      const a = new Uint8Array(insn.address.readByteArray(insn.size));
      const b = new Uint8Array(at.readByteArray(insn.size));
      return a.every((v, i) => v === b[i]);
    } catch (e) {
      return false;
    }
  };
  const hits = [];
  insns.forEach((insn, i) => {
    if (!same(insn, pc))
      return;
    let score = 0;
    for (let j = i + 1, at = pc.add(insn.size); j < insns.length && same(insns[j], at);
         at = at.add(insns[j].size), j++)
      score++;
    for (let j = i - 1, at = pc; j >= 0 && same(insns[j], at.sub(insns[j].size));
         at = at.sub(insns[j].size), j--)
      score++;
    hits.push([score, insn.address]);
  });
  if (hits.length === 0)
    return null;
  hits.sort((x, y) => y[0] - x[0]);
  return hits.length === 1 || hits[0][0] > hits[1][0] ? hits[0][1] : null;
}

function instructionsOf(block) {
  const out = [];
  let at = ptr(block.start);
  const end = ptr(block.end);
  while (at.compare(end) < 0 && out.length < 4096) {
    const insn = Instruction.parse(at);
    out.push(insn);
    at = insn.next;
  }
  return out;
}

/* A RIP-relative instruction (Stalker rewrites those) whose operand holds `memory`. */
function ripRelative(block, memory) {
  const hits = [];
  for (const insn of instructionsOf(block)) {
    for (const op of insn.operands) {
      if (op.type === 'mem' && op.value.base === 'rip') {
        const ea = insn.next.add(op.value.disp);
        if (memory.compare(ea) >= 0 && memory.compare(ea.add(op.size)) < 0)
          hits.push(insn.address);
      }
    }
  }
  return hits.length === 1 ? hits[0] : null;
}

const BRANCH_KINDS = new Set([1, 2, 3, 4, 5, 6]);   // call, return, jump, cond, indirect ones

/* After Stalker's `syscall` a followed thread's code has a marker (signals.c,
 * bt_syscall_mark: `jmp +12; marker32; slot64`), then the vfork check (vfork.c: 76 bytes
 * from `mov rcx, [armed]; jrcxz +66`): a signal delivered as the call returns (abort's
 * tgkill) leaves the pc on them. The program's next instruction follows. */
const VFORK_CHECK_BYTES = 76;

function pastSyscallMarker(pc) {
  try {
    if (pc.readU8() === 0xeb && pc.add(1).readU8() === 12 &&
        pc.add(2).readU32() === cfg.add(CFG.marker).readU32())
      pc = pc.add(14);
    if (pc.readU32() === 0x250c8b48 && pc.add(8).readU8() === 0xe3 &&
        pc.add(9).readU8() === VFORK_CHECK_BYTES - 10)
      pc = pc.add(VFORK_CHECK_BYTES);
  } catch (e) {
  }
  return pc;
}

/* Where the program really was when a followed thread faulted at `pc`, and how we know
 * (docs/stalker.md, "Where the fault really was"): [address, how] or [null, why not]. */
function realFault(tid, pc, memory, info) {
  if (Process.findModuleByAddress(pc) !== null && !Cloak.hasRangeContaining(pc))
    return [pc, 'native'];            // the thread ran the program's own code (a handler)
  pc = pastSyscallMarker(pc);
  const block = lastBlockOf(tid);
  info.block = block;
  if (block === null)
    return [null, 'no block'];
  const copied = matchInstruction(block, pc);
  if (copied !== null)
    return [copied, 'copied'];
  const branch = BRANCH_KINDS.has(block.kind);
  if (Cloak.hasRangeContaining(pc)) {
    /* Frida's own code: Stalker reading the code at the target of the block's branch.
     * Natively the fetch there faulted (pc = si_addr = the target), or, with no address
     * (a non-canonical target), the branch itself did. */
    if (branch && memory !== null && memory.isNull())
      return [ptr(block.last), 'branch'];
    if (branch && memory !== null) {
      new NativeFunction(cm.bt_crash_target, 'void', ['pointer'])(memory);
      return [memory, 'target'];
    }
    return [null, 'frida'];
  }
  if (memory !== null && !memory.isNull()) {
    const rip = ripRelative(block, memory);
    if (rip !== null)
      return [rip, 'rip-relative'];
  }
  /* Stalker's code for the block's branch (a call's push of the return address, a
   * memory operand of an indirect branch, a ret's read of the stack) */
  return branch ? [ptr(block.last), 'branch'] : [null, 'rewritten'];
}

/* The faulting thread's registers (DWARF numbers: symbols/unwind.py) and a copy of its
 * stack from rsp, for the host to unwind: under Stalker the registers are the program's
 * at its copied instruction, and the pc is where the program really was. */
const DWARF_REGISTERS = ['rax', 'rdx', 'rcx', 'rbx', 'rsi', 'rdi', 'rbp', 'rsp', 'r8', 'r9',
                         'r10', 'r11', 'r12', 'r13', 'r14', 'r15'];
const STACK_COPY_BYTES = 256 * 1024;

/* Whether the registers at the fault are the program's: it faulted in its own code, in
 * its copy in Stalker's slab, or in Stalker's push of a call's return address (a stack
 * overflow); not in Frida's code, nor in Stalker's code for a return or a jump. */
function programsRegisters(info, pc) {
  if (info.realPc === null || Cloak.hasRangeContaining(pc))
    return false;
  if (info.how === 'branch')
    return info.block !== null && (info.block.kind === 1 || info.block.kind === 6);
  return info.how === 'copied' || info.how === 'rip-relative' || info.how === 'native';
}

/* Interceptor's return addresses (docs/stalker.md, "The stack above abort"): a function
 * hooked with an onLeave listener gets, at its entry, its return address on the stack
 * replaced by the address of Interceptor's on-leave trampoline (in Frida's cloaked
 * code). Frida's own agent hooks exit, _exit and abort that way (frida-core's
 * ExitMonitor), and we hook __call_tls_dtors and dlopen: an unwinder reading the stack
 * above abort's frame (an assert, an uncaught C++ exception) stopped at that address.
 * A probe of ours on each keeps, per thread, the stack slot and the real return address
 * (Interceptor puts its trampoline's address there after every listener ran); the copy
 * of the stack at a crash or a snapshot gets the real address back in those slots. */
/* Frida's (abort, exit) and ours (agent.js, ours.js: dlopen is hooked only when there
 * are libraries of ours); a probe alone would hook a function, and change nothing */
const HOOKED_RETURNS = ['abort', 'exit', '__call_tls_dtors'];
const HOOKED_SLOTS = 256;          // a ring of {tid, slot, real}, 24 bytes each

/* The probe is C (a fork child calls exit without running JS) */
const HOOKED_C = `
#include <gum/guminterceptor.h>

typedef struct { guint64 tid; gpointer slot; gpointer real; } BtHooked;
extern BtHooked bt_hooked[${HOOKED_SLOTS}];
extern volatile gint bt_hooked_n;

void
bt_hooked_probe (GumInvocationContext * ic)
{
  BtHooked * e = &bt_hooked[(guint) g_atomic_int_add (&bt_hooked_n, 1) % ${HOOKED_SLOTS}];

  e->tid = 0;
  e->slot = GSIZE_TO_POINTER (ic->cpu_context->rsp);
  e->real = gum_invocation_context_get_return_address (ic);
  e->tid = gum_invocation_context_get_thread_id (ic);
}
`;
let hooked = null;   // { ring, count }

function watchHookedReturns(also) {
  const ring = Memory.alloc(24 * HOOKED_SLOTS);
  const count = Memory.alloc(8);
  const probe = new CModule(HOOKED_C, { bt_hooked: ring, bt_hooked_n: count });
  keep.push(ring, count, probe);
  hooked = { ring: ring, count: count };
  for (const name of HOOKED_RETURNS.concat(also)) {
    const address = Module.findGlobalExportByName(name);
    if (address !== null)
      hook(address, probe.bt_hooked_probe);   // a probe: the stack is left alone
  }
}

/* The current thread's hooked calls still open, [slot, real return address], oldest
 * first: a call whose slot is at or below a later one's has returned. */
function openHookedCalls() {
  const open = [];
  if (hooked === null)
    return open;
  const tid = Process.getCurrentThreadId();
  const n = hooked.count.readU32();
  for (let i = Math.max(0, n - HOOKED_SLOTS); i < n; i++) {
    const e = hooked.ring.add(24 * (i % HOOKED_SLOTS));
    if (e.readU64().toNumber() !== tid)
      continue;
    const slot = e.add(8).readPointer();
    while (open.length > 0 && open[open.length - 1][0].compare(slot) <= 0)
      open.pop();
    open.push([slot, e.add(16).readPointer()]);
  }
  return open;
}

/* The open hooked calls' slots in [base, base + n) that hold an address in Frida's
 * code: [offset from base, real return address]. */
function trampolineSlots(base, n) {
  const out = [];
  for (const [slot, real] of openHookedCalls()) {
    const off = slot.sub(base);
    if (slot.compare(base) < 0 || off.compare(ptr(n - 8)) > 0)
      continue;
    try {
      const now = slot.readPointer();
      if (!now.equals(real) && Cloak.hasRangeContaining(now))
        out.push([off.toUInt32(), real]);
    } catch (e) {
    }
  }
  return out;
}

/* Put the real return addresses back in the copy. */
function untrampoline(copy, base) {
  const fixes = trampolineSlots(base, copy.byteLength);
  const view = new DataView(copy);
  for (const [off, real] of fixes) {
    const v = uint64(real.toString());
    view.setUint32(off, v.and(0xffffffff).toNumber(), true);
    view.setUint32(off + 4, v.shr(32).toNumber(), true);
  }
  return fixes.length;
}

function stackOf(context, realPc) {
  const regs = DWARF_REGISTERS.map((name, i) => [i, context[name].toString()]);
  if (realPc !== null)
    regs.push([16, realPc]);
  const sp = context.rsp;
  let base = sp;
  let range = Process.findRangeByAddress(sp);
  /* a stack overflow: rsp went past the stack's end, into its guard; the copy starts
   * where the stack's mapping does, up to 256 KiB above */
  for (let k = 1; range === null && k <= 64; k++)
    range = Process.findRangeByAddress(sp.add(k * 4096));
  if (range === null)
    return [regs, null, null];
  if (range.base.compare(sp) > 0)
    base = range.base;
  const n = Math.min(STACK_COPY_BYTES, range.size - base.sub(range.base).toUInt32());
  const copy = base.readByteArray(n);
  if (copy !== null)
    untrampoline(copy, base);
  return [regs, copy, base.toString()];
}

/* The program has SIG_DFL for SIGABRT: Frida's handler, had it returned, would have let
 * raise() return, and abort() go on to reset the action and raise it again (recording
 * that second part, and Interceptor's sigaction hook, which natively never ran). Die here,
 * as natively, of the default action. */
function dieOfAbort(tid) {
  const act = Memory.alloc(152);
  const sigaction = new NativeFunction(Module.getGlobalExportByName('sigaction'), 'int',
                                       ['int', 'pointer', 'pointer']);
  if (sigaction(SIGABRT, NULL, act) !== 0 || !act.readPointer().isNull())
    return;                           // the program's own handler runs (Frida chains it)
  const syscall = new NativeFunction(Module.getGlobalExportByName('syscall'), 'long',
                                     ['long', 'long', 'pointer', 'pointer', 'long']);
  const tgkill = new NativeFunction(Module.getGlobalExportByName('syscall'), 'long',
                                    ['long', 'long', 'long', 'long']);
  syscall(13, SIGABRT, Memory.alloc(32), NULL, 8);   // rt_sigaction: SIG_DFL
  tgkill(234, Process.id, tid, SIGABRT);
}

/* The kernel's siginfo of the signal: in its signal frame, right after its ucontext
 * (uc_flags, uc_link, uc_stack: 24, uc_mcontext: 256, uc_sigmask: 8 = 304 bytes), which
 * Frida's handler passes on as nativeContext. null unless its si_signo is `sig`. */
const KERNEL_UCONTEXT_BYTES = 304;

function siginfoOf(details, sig) {
  if (details.nativeContext === undefined || details.nativeContext.isNull())
    return null;
  const info = details.nativeContext.add(KERNEL_UCONTEXT_BYTES);
  if (info.readS32() !== sig)
    return null;
  return { code: info.add(8).readS32(), addr: info.add(16).readPointer() };
}

const SIGNAL_OF_KIND = { 'access-violation': null, 'illegal-instruction': 4, 'arithmetic': 8,
                         'breakpoint': 5, 'abort': 6 };

let parkedTid = null;   // run --gdb: the crashing thread, parked (the host holds it)

/* The program handles this fault itself (the JVM faults on purpose at start-up, for its
 * null checks and safepoints): bt_fault_entry (signals.c) gives the handler the
 * program's pc when it is known for certain (`real`: an instruction Stalker copied as it
 * was). */
function toProgramsHandler(tid, pc, real) {
  const t = followed.get(tid);
  if (t === undefined)
    return;
  t.ctx.add(TH.faultReal).writeU64(real !== null ? uint64(real.toString()) : 0);
  t.ctx.add(TH.faultStalker).writeU64(uint64(pc.toString()));
}

function onException(details) {
  if (inChild() || parkedTid !== null)
    return false;   // after run --gdb's hold (Frida still here): it dies of its crash
  const tid = Process.getCurrentThreadId();
  const pc = details.address;
  const memory = details.memory ? details.memory.address : null;
  const info = {
    type: 'crash', tid: tid, kind: details.type, pc: pc.toString(),
    memory: memory !== null ? memory.toString() : null, block: null, realPc: null, how: null,
  };
  let si = null;
  try {
    const [real, how] = followed.has(tid) ? realFault(tid, pc, memory, info) : [pc, 'unfollowed'];
    info.realPc = real !== null ? real.toString() : null;
    info.how = how;
    /* si_addr of SIGILL and SIGFPE is the faulting instruction (under Stalker, its copy) */
    if ((details.type === 'illegal-instruction' || details.type === 'arithmetic') && real !== null)
      info.memory = info.realPc;
    let sig = SIGNAL_OF_KIND[details.type];
    if (sig === null) {               // SIGSEGV or SIGBUS
      si = siginfoOf(details, SIGSEGV);
      if (si !== null)
        sig = SIGSEGV;
      else if ((si = siginfoOf(details, SIGBUS)) !== null)
        sig = SIGBUS;
    } else if (sig !== undefined) {
      si = siginfoOf(details, sig);
    }
    info.signal = si !== null ? sig : null;
    info.sent = si !== null && si.code <= 0;   // by kill or tgkill (raise)
    if (info.sent && details.type !== 'abort')
      info.memory = null;             // si_addr means nothing then
  } catch (e) {
    info.error = String(e);
  }
  /* a fault signal the program has a handler of its own for (signals.js wrapped it: it
   * may handle the fault and go on) */
  const handled = info.signal !== null && FAULT_SIGNALS.has(info.signal) &&
                  originalActions.has(info.signal);
  if (handled) {
    toProgramsHandler(tid, pc, info.how === 'copied' ? ptr(info.realPc) : null);
    /* A real fault is reported all the same, marked handled: if the program's handler
     * gives up and raises it again (Python's faulthandler, a crash reporter), the host
     * shows this fault, not the raise (messages.py). */
    if (info.sent)
      return false;
    info.handled = true;
  } else {
    noteXstate();   // agent.js: the note reaches the tracer before the crash report
  }
  let stack = null;
  try {
    if (programsRegisters(info, pc))
      [info.registers, stack, info.stackBase] = stackOf(details.context, info.realPc);
    else
      info.stackError = `the fault was in Stalker's code (${info.how}), where the registers ` +
                        'are not the program\'s';
  } catch (e) {
    info.stackError = String(e);
  }
  /* run --gdb: the host holds the program at this crash (holding.py) if we can give the
   * program back its own state: its registers, the real pc, and no handler of its own
   * for the signal */
  info.hold = params.holdOnCrash === true && stack !== null && info.realPc !== null &&
              info.signal !== null && !originalActions.has(info.signal);
  send(info, stack);
  let ack = null;
  recv('crash-ack', (m) => { ack = m; }).wait();
  if (handled)
    return false;                     // the program's handler runs (bt_fault_entry)
  if (info.hold && ack !== null && ack.hold === true) {
    /* park the thread (holding.py): out of the handler, out of Stalker (as the handler
     * returns: it never comes back to Stalker's code, which Frida's unload would wait
     * for), spinning on a `jmp $` of a page that outlives Frida, every register the
     * program's but the pc; the host puts the pc back once Frida is gone */
    let page = null;
    try {
      page = mmap(NULL, PAGE, PROT_RW, MAP_PRIVATE | MAP_ANON, -1, 0);
      page.writeByteArray([0xeb, 0xfe]);
      libc.mprotect(page, PAGE, PROT_RX);
    } catch (e) {
      page = null;                    // not parked: it dies of its crash, as without --gdb
    }
    if (page !== null) {
      /* GDB's bt reads the stack itself: the real return addresses go back there */
      const sp = details.context.rsp;
      for (const [off, real] of trampolineSlots(sp, 1 << 24))
        sp.add(off).writePointer(real);
      details.context.pc = page;
      Stalker.unfollow();
      followed.delete(tid);
      parkedTid = tid;
      send({ type: 'parked', tid: tid, page: page.toString() });
      return true;
    }
  }
  if (details.type === 'abort')
    dieOfAbort(tid);
  return false;   // let the program die of its signal (or its own handler run)
}
