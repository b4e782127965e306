/*
 * branchtrace Stalker agent, part 2 of 6 (agent_code.py concatenates agent.js,
 * signals.js, crash.js, detach.js, ours.js and trigger.js into one script): the program's signal handlers,
 * wrapped so that entering and leaving them is recorded, and the SIGINT stand-in that
 * keeps a terminal's Ctrl-C for branchtrace from killing the program.
 */

/* Signal handlers run where the kernel sends them, outside Stalker's code: the program's
 * handlers are installed wrapped in bt_signal_entry, which records the entry into the
 * handler and the return from it (recorder.c). sigaction's own caller sees its handler.
 * The fault signals are Frida's (its exceptor keeps the program's action and calls it
 * after the agent's exception handler): their handlers are wrapped in bt_fault_entry,
 * which also gives the handler the program's pc (signals.c, crash.js). */
const originalActions = new Map();   // signal -> the program's struct sigaction (a copy)
const FAULT_SIGNALS = new Set([4, 7, 8, 11]);   // SIGILL, SIGBUS, SIGFPE, SIGSEGV

function wrapSignalHandlers(table) {
  const sigaction = Module.findGlobalExportByName('sigaction');
  if (sigaction === null)
    return;
  libc.sigaction = new NativeFunction(sigaction, 'int', ['int', 'pointer', 'pointer']);
  hook(sigaction, {
    onEnter(args) {
      const sig = args[0].toInt32();
      this.sig = -1;
      if (sig <= 0 || sig >= NSIG || (FRIDA_SIGNALS.has(sig) && !FAULT_SIGNALS.has(sig)) ||
          stopping)
        return;
      this.sig = sig;
      const wrapper = FAULT_SIGNALS.has(sig) ? cm.bt_fault_entry : cm.bt_signal_entry;
      this.wrapper = wrapper;
      this.oldact = args[2];
      const entry = table.add(16 * sig);
      this.previous = { handler: entry.readPointer(), siginfo: entry.add(8).readU32() };
      const act = args[1];
      if (act.isNull())
        return;
      const handler = act.readPointer();
      if (sig === SIGINT)
        sigintOurs = false;
      if (handler.compare(ptr(1)) <= 0 || handler.equals(wrapper)) {
        entry.writePointer(NULL);      // SIG_DFL or SIG_IGN: nothing of ours
        originalActions.delete(sig);
        if (sig === SIGINT && handler.isNull()) {
          this.copy = sigintAction(act);  // SIG_DFL: Ctrl-C for branchtrace is swallowed
          args[1] = this.copy;
          sigintOurs = true;
        }
        return;
      }
      originalActions.set(sig, Memory.dup(act, 152));
      const flags = act.add(136).readS32();   // struct sigaction: handler, mask[128], flags
      const copy = Memory.dup(act, 152);
      this.copy = copy;
      copy.writePointer(wrapper);
      copy.add(136).writeS32(flags | SA_SIGINFO);
      args[1] = copy;
      entry.writePointer(handler);
      entry.add(8).writeU32((flags & SA_SIGINFO) !== 0 ? 1 : 0);
      entry.add(12).writeU32(cm.signalBlock(handler));
    },
    onLeave(retval) {
      if (this.sig >= 0 && this.copy !== undefined && cfg.add(CFG.restorer).readPointer().isNull())
        noteRestorer(this.sig);
      if (this.sig < 0 || this.oldact.isNull())
        return;
      if (this.oldact.readPointer().equals(cm.bt_sigint)) {
        this.oldact.writePointer(NULL);   // the program's own setting: SIG_DFL
        this.oldact.add(136).writeS32(0);
        return;
      }
      if (this.oldact.readPointer().equals(this.wrapper) && !this.previous.handler.isNull()) {
        this.oldact.writePointer(this.previous.handler);
        if (!this.previous.siginfo) {
          const flags = this.oldact.add(136).readS32();
          this.oldact.add(136).writeS32(flags & ~SA_SIGINFO);
        }
      }
    },
  });
}

/* glibc's signal return trampoline (__restore_rt, which it installs as sa_restorer): the
 * kernel's own record of the action says where it is. Blocks there are not recorded
 * (signals.c): a handler run under Stalker returns to the interrupted block directly. */
function noteRestorer(sig) {
  const act = Memory.alloc(32);       // the kernel's: handler, flags, restorer, mask
  const syscall = fn('syscall', 'int', ['long', 'long', 'pointer', 'pointer', 'long']);
  if (syscall(13, sig, NULL, act, 8) === 0)
    cfg.add(CFG.restorer).writePointer(act.add(16).readPointer());
}

/* Detaching: the kernel must not call bt_signal_entry (or bt_sigint) once the CModule is
 * gone. */
function restoreSignalHandlers() {
  for (const [sig, act] of originalActions)
    libc.sigaction(sig, act, NULL);
  originalActions.clear();
  if (sigintOurs) {
    libc.sigaction(SIGINT, Memory.alloc(152), NULL);   // zeroes: SIG_DFL
    sigintOurs = false;
  }
}

/* Ctrl-C at a terminal reaches the program too (it is in branchtrace's process group).
 * While the program leaves SIGINT at SIG_DFL, bt_sigint (signals.c) stands in for it:
 * it swallows the signal when the host says it was interrupted (a message, just below),
 * else it dies of it as SIG_DFL would. */
let sigintOurs = false;

function sigintAction(template) {
  const act = Memory.alloc(152);      // struct sigaction: handler, mask[128], flags, restorer
  if (template !== null)
    Memory.copy(act, template, 152);
  act.writePointer(cm.bt_sigint);
  act.add(136).writeS32(SA_SIGINFO | SA_RESTART);
  keep.push(act);
  return act;
}

function standInForSigint() {
  recv('interrupt', () => { cfg.add(CFG.interrupted).writeU32(1); });
  const old = Memory.alloc(152);
  if (libc.sigaction(SIGINT, NULL, old) !== 0 || !old.readPointer().isNull())
    return;                           // the program ignores it or has a handler
  if (libc.sigaction(SIGINT, sigintAction(null), NULL) === 0)
    sigintOurs = true;
}

/* Stalker.follow, unfollow and invalidate of another thread go through Frida's
 * gum_linux_modify_thread. It clones a helper process (CLONE_VM without CLONE_SIGHAND,
 * a one-page stack, a bare TLS page) that ptrace-attaches the thread, and waits for its
 * answer on a socketpair. The helper inherits the calling thread's signal handlers and
 * mask, and the kernel tells a tracer of its tracee's stop with SIGCHLD: in a program
 * that handles SIGCHLD (bash, make, servers) the program's handler ran in the helper,
 * and faulted there. The helper died with the thread stopped, the caller waited for
 * ever on its socket (it holds both ends), and the program was left stopped (state T).
 * So these calls run with every asynchronous signal blocked in the calling thread: the
 * helper inherits that mask, a signal sent to it stays pending until it exits, and one
 * sent to the program meanwhile goes to another thread, or waits the few milliseconds.
 * The fault signals stay open: blocked, a fault would kill the program at once. */
const ASYNC_SIGNALS = uint64('0xffffffffbffffb27');   // all but 4, 5, 7, 8, 11, 31
let pthreadSigmask = null;

function withSignalsBlocked(body) {
  if (pthreadSigmask === null)
    pthreadSigmask = fn('pthread_sigmask', 'int', ['int', 'pointer', 'pointer']);
  const set = Memory.alloc(256);   // two sigset_t: the blocked set, the old mask
  const old = set.add(128);
  set.writeU64(ASYNC_SIGNALS);
  pthreadSigmask(0, set, old);     // SIG_BLOCK
  try {
    return body();
  } finally {
    pthreadSigmask(2, old, NULL);  // SIG_SETMASK
  }
}
