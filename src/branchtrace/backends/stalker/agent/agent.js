/*
 * branchtrace Stalker agent, part 1 of 6 (agent_code.py concatenates agent.js,
 * signals.js, crash.js, detach.js, ours.js and trigger.js into one script): follows every thread of the target with Stalker and a
 * CModule transform (recorder.h, emit.c, lookups.c, thread.c, signals.c, xstate.c,
 * recorder.c) that makes each block
 * append its id to the thread's region of the shared store. The host
 * (backends/stalker/host.py) drives it through rpc.exports and answers its slot
 * requests; bulk data never travels as messages.
 *
 * How threads get followed:
 *   - the main thread of a program we started sits at its entry point; a one-shot
 *     Interceptor hook there makes it follow itself as soon as it runs;
 *   - threads that exist when we attach are followed from the agent's thread;
 *   - new threads follow themselves from the thread observer's onAdded, which Frida
 *     calls in the new thread before its start routine runs.
 * Frida's own threads are never followed, and blocks of Frida's own code (the agent,
 * interceptor trampolines) get no recording code (recorder.c, bt_is_tool).
 */
'use strict';

const PROT_NONE = 0, PROT_RW = 3, PROT_RX = 5;
const MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_FIXED = 0x10, MAP_ANON = 0x20;
const MAP_NORESERVE = 0x4000;
const O_RDWR = 2, O_CLOEXEC = 0x80000;
const PAGE = 4096;

/* BtConfig field offsets (recorder.c) */
const CFG = { table: 0, blocks: 8, capacity: 16, ranges: 24, nranges: 32, bmi2: 36,
              abort: 40, hostPid: 44, modules: 48, isTool: 56, threads: 64,
              signals: 72, hostStat: 80, interrupted: 88, inSigint: 92, enter: 96,
              restorer: 104, marker: 112, ntools: 116, tools: 120, ours: 128, nours: 136,
              rdgs: 144, wrgs: 152, smc: 160, inlinePaths: 164,
              size: 168 };
const TOOL_SLOTS = 256;
/* BtXstate field offsets (xstate.c: the AVX-512 fix of Frida's epilog helpers) */
const XS = { avx512: 0, learned: 4, patched: 24, failed: 28, size: 48 };
let xstate = null, xstateTimer = null, xstateNoted = false;

/* Tell the tracer (a note in the trace) when the fix could not be applied: this Frida's
 * epilog helpers are not of the shape xstate.c knows, and the program may then lose the
 * upper halves of zmm0-15 (docs/stalker.md, "AVX-512 state"). Polled: the transform runs
 * in the program's threads, where JavaScript may not run (clone children). */
function noteXstate() {
  if (xstate === null || xstateNoted || xstate.add(XS.failed).readU32() === 0)
    return;
  xstateNoted = true;
  const learned = xstate.add(XS.learned).readU32();
  send({ type: 'note', text: 'this Frida\'s Stalker loses the upper halves of zmm0-15 ' +
         '(AVX-512) and its code is not of the shape branchtrace can fix (' +
         (learned === 1 ? 'an epilog helper differs' : 'no epilog helper found') +
         '): a program that uses AVX-512 may misbehave under this backend' });
}
const THREAD_SLOTS = 4096, NSIG = 65;
/* signals Frida's exception handler owns: their handlers are left alone */
const FRIDA_SIGNALS = new Set([4, 5, 6, 7, 8, 11, 31]);
const SA_SIGINFO = 4, SA_RESTART = 0x10000000, SIGINT = 2, SIGABRT = 6, SIGBUS = 7, SIGSEGV = 11;
/* BtThread field offsets (recorder.c) */
const TH = { cursor: 24, chunkEnd: 32, slow: 40, entry: 56, region: 64, capacity: 72,
             chunk: 80, inSlow: 104, nopend: 112, flush: 120, sinkEnd: 128, npending: 136,
             check: 272, retcache: 280, jslot: 304, sharesTls: 340, vforkArmed: 4008,
             faultReal: 4032, faultStalker: 4040 };
/* the return cache (lookups.c, "Returns"): 262144 entries of 16 bytes per thread */
const RETCACHE_BYTES = 262144 * 16;
/* and each thread's jump slot, 8 bytes below 2 GiB (MAP_32BIT), 64 bytes apart */
const MAP_32BIT = 0x40;
let jslotPage = null, jslotNext = PAGE;

function newJumpSlot() {
  if (jslotNext === PAGE) {
    const page = libc.mmap(NULL, PAGE, PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_32BIT, -1, 0);
    if (page.equals(ptr(-1)) || page.compare(ptr('0x7ffff000')) > 0)
      return NULL;   // no low memory: indirect branches stay Stalker's
    jslotPage = page;
    jslotNext = 0;
  }
  const slot = jslotPage.add(jslotNext);
  jslotNext += 64;
  return slot;
}

const libc = {};
let params = null;
let fastFillAt = null;   // fill.js: the offset of Frida's byte-at-a-time memset, rewritten
let capTablesAt = null;  // capcache.js: the offset of capstone's table builder, replaced
let cm = null;
let cfg = null;
let tablePtr = null;
let threadObserver = null;
let moduleObserver = null;
let earlyThreads = null;  // what the thread observer reported before init (prepare)
let entryHook = null;
let entryFollow = null;   // the main thread's follow from the entry, until it happens
let parkedSlot = null;    // hold.py: the main thread's slot, until arm()
let stopping = false;
const followed = new Map();     // tid -> { ctx: NativePointer, base, size }
const refused = new Set();      // tids that got no slot
/* threads of another Frida agent, stuck in the program when an attach was given up and
 * tried again (fridaattach.py): not the program's, never followed */
const foreign = new Set();
const keep = [];                // objects the C side points to

/* Stream mode stores records through gs (gs.c): `rdgsbase rax; ret` and `wrgsbase rdi;
 * ret`, when the kernel lets programs use them (AT_HWCAP2 has HWCAP2_FSGSBASE): plain
 * instructions, which no seccomp filter of the program can refuse, as it could
 * arch_prctl. Without them (older kernels and CPUs), stream mode keeps its cursor. */
function gsStubs() {
  const getauxval = Module.findGlobalExportByName('getauxval');
  if (getauxval === null ||
      (new NativeFunction(getauxval, 'ulong', ['ulong'])(26).toNumber() & 2) === 0)
    return;
  const page = mmap(NULL, PAGE, PROT_RW, MAP_PRIVATE | MAP_ANON, -1, 0);
  page.writeByteArray([0xf3, 0x48, 0x0f, 0xae, 0xc8, 0xc3]);          // rdgsbase rax; ret
  page.add(16).writeByteArray([0xf3, 0x48, 0x0f, 0xae, 0xdf, 0xc3]);  // wrgsbase rdi; ret
  libc.mprotect(page, PAGE, PROT_RX);
  cfg.add(CFG.rdgs).writePointer(page);
  cfg.add(CFG.wrgs).writePointer(page.add(16));
}

function fn(name, ret, args) {
  return new NativeFunction(Module.getGlobalExportByName(name), ret, args);
}

function mmap(addr, size, prot, flags, fd, offset) {
  const p = libc.mmap(addr, size, prot, flags, fd, offset);
  if (p.equals(ptr(-1)))
    throw new Error(`mmap of ${size} bytes failed`);
  return p;
}

function openFile(path) {
  const fd = libc.open(Memory.allocUtf8String(path), O_RDWR | O_CLOEXEC, 0);
  if (fd < 0)
    throw new Error(`cannot open ${path} in the target`);
  return fd;
}

/* Address space for a thread's memory: below 2 GiB when `low` and the kernel has room
 * there (MAP_32BIT: between 1 and 2 GiB), so that its block-start code addresses it
 * with a disp32 and keeps rax out of memory (emit.c, build_record_low and
 * build_stream_low); else anywhere. At most LOW_BUDGET of that range is ours, the rest
 * stays the program's (LuaJIT, some JITs and non-PIE heaps live there). */
const LOW_LIMIT = ptr('0x7ff00000');
const LOW_BUDGET = 64 * 1024 * 1024;
let lowUsed = 0;

function reserve(size, low) {
  const flags = MAP_PRIVATE | MAP_ANON | MAP_NORESERVE;
  if (low && lowUsed + size <= LOW_BUDGET) {
    const p = libc.mmap(NULL, size, PROT_NONE, flags | MAP_32BIT, -1, 0);
    if (!p.equals(ptr(-1))) {
      if (p.add(size).compare(LOW_LIMIT) <= 0) {
        lowUsed += size;
        return p;
      }
      libc.munmap(p, size);
    }
  }
  return mmap(NULL, size, PROT_NONE, flags, -1, 0);
}

/* One reservation per thread: [region][entry page][private context page], and with
 * BRANCHTRACE_STALKER_CHECK a page of the check file holding the thread's counter. The
 * return cache is a mapping of its own. */
function mapThread(tid, slot) {
  const p = params;
  const size = p.regionBytes + (p.checkPath !== null ? 3 : 2) * PAGE;
  const base = reserve(size, (p.mode === 1 && p.capacity === 65536) || p.mode === 2);
  const fd = openFile(p.storePath);
  try {
    const entryOffset = p.tableOffset + p.entrySize * slot.index;
    const entryPage = entryOffset - (entryOffset % PAGE);
    mmap(base, p.regionBytes, PROT_RW, MAP_SHARED | MAP_FIXED, fd, slot.regionOffset);
    mmap(base.add(p.regionBytes), PAGE, PROT_RW, MAP_SHARED | MAP_FIXED, fd, entryPage);
    const ctx = mmap(base.add(p.regionBytes + PAGE), PAGE, PROT_RW,
                     MAP_PRIVATE | MAP_ANON | MAP_FIXED, -1, 0);
    const entry = base.add(p.regionBytes + (entryOffset - entryPage));
    cm.threadInit(ctx, entry, base, uint64(p.capacity), uint64(p.chunk), p.mode, tid,
                  uint64(p.regionBytes));
    if (p.checkPath !== null && slot.checkIndex !== null)
      mapCheck(ctx, base.add(p.regionBytes + 2 * PAGE), slot.checkIndex);
    if (p.retcache) {
      const cache = mmap(NULL, RETCACHE_BYTES, PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_NORESERVE,
                         -1, 0);
      ctx.add(TH.retcache).writePointer(cache);
      ctx.add(TH.jslot).writePointer(newJumpSlot());
    }
    cm.registerThread(ctx);
    return { ctx: ctx, base: base, size: size };
  } finally {
    libc.close(fd);
  }
}

/* The thread's block counter (tests: docs/stalker.md, "Checking the stream"): word
 * `index` of the check file, in a shared page right after the context page, so that
 * the emitted code reaches it as T + a displacement. Set before the thread is followed. */
function mapCheck(ctx, at, index) {
  const fd = openFile(params.checkPath);
  try {
    const offset = 8 * index;
    mmap(at, PAGE, PROT_RW, MAP_SHARED | MAP_FIXED, fd, offset - (offset % PAGE));
    ctx.add(TH.check).writePointer(at.add(offset % PAGE));
  } finally {
    libc.close(fd);
  }
}

/* Ask the host for store slots (it owns the store); blocks until it answers. */
function requestSlots(tids) {
  const key = 'slots:' + tids.join(',');
  let reply = null;
  send({ type: 'slots', tids: tids, key: key });
  recv(key, m => { reply = m; }).wait();
  if (reply === null)   // the script is being unloaded (the tracer went away)
    return tids.map(tid => ({ tid: tid, error: 'the tracer is gone' }));
  return reply.slots;   // [{tid, index, regionOffset, checkIndex} | {tid, error}]
}

function prepare(slot) {
  if (slot.error !== undefined) {
    refused.add(slot.tid);
    return null;
  }
  const t = mapThread(slot.tid, slot);
  followed.set(slot.tid, t);
  return t;
}

/* How a thread is followed. BRANCHTRACE_STALKER_VARIANT (a benchmarking aid, see
 * docs/stalker.md) swaps our recording for `follow`: a transform that only keeps the
 * instructions, or `stock`: Frida's own block events, parsed and counted in onReceive. */
let stockBlocks = 0;

function followOptions(ctx) {
  if (params.variant === 'follow')
    return { transform: cm.bt_transform_keep };
  if (params.variant === 'stock')
    return {
      transform: cm.bt_transform_keep,   // Frida's default, and the AVX-512 fix (xstate.c)
      events: { block: true },
      onReceive(events) {
        stockBlocks += Stalker.parse(events).length;
      },
    };
  cm.cacheClear(ctx);   // Stalker's code of an earlier following is gone
  return { transform: cm.transform, data: ctx };
}

function isOurs(tid) {
  return Cloak.hasThread(tid);
}

/* Frida's own threads, for signals.c (bt_redirect): a signal for the process that one of
 * them gets is sent again to the program's. */
function noteTool(tid) {
  const n = cfg.add(CFG.ntools).readU32();
  if (n >= TOOL_SLOTS)
    return;
  cfg.add(CFG.tools).readPointer().add(4 * n).writeU32(tid);
  cfg.add(CFG.ntools).writeU32(n + 1);
}

/* Every thread id of this process (/proc/self/task, read with getdents64). */
function taskIds() {
  const O_DIRECTORY = 0x10000, SYS_getdents64 = 217, ids = [];
  const sys = fn('syscall', 'long', ['long', 'long', 'pointer', 'long']);
  const fd = libc.open(Memory.allocUtf8String('/proc/self/task'), O_DIRECTORY | O_CLOEXEC, 0);
  if (fd < 0)
    return ids;
  const buf = Memory.alloc(8192);
  for (;;) {
    const n = sys(SYS_getdents64, fd, buf, 8192).valueOf();
    if (n <= 0)
      break;
    for (let off = 0; off < n;) {
      const rec = buf.add(off);
      const tid = parseInt(rec.add(19).readUtf8String(), 10);
      if (tid > 0)
        ids.push(tid);
      off += rec.add(16).readU16();
    }
  }
  libc.close(fd);
  return ids;
}

/* In a forked child this agent is a copy with no tracer behind it: never ask, never wait. */
function inChild() {
  return libc.getpid() !== params.pid;
}

function followNew(tids, sharesTls = false) {
  if (inChild())
    return;
  tids = tids.filter(tid => !followed.has(tid) && !refused.has(tid) && !isOurs(tid)
                     && !foreign.has(tid));
  if (tids.length === 0 || stopping)
    return;
  for (const slot of requestSlots(tids)) {
    const t = prepare(slot);
    if (t === null)
      continue;
    if (sharesTls)
      t.ctx.add(TH.sharesTls).writeU32(1);
    withSignalsBlocked(() => Stalker.follow(slot.tid, followOptions(t.ctx)));   // signals.js
  }
}

/* The main thread of a program we started is stopped at its entry point: make it
 * follow itself when it gets there. */
function followAtEntry(entry, slot) {
  const t = prepare(slot);
  if (t === null)
    return;
  entryFollow = () => Stalker.follow(slot.tid, followOptions(t.ctx));
  /* a probe (a function, not {onEnter}): Interceptor leaves the stack alone, and at the
   * entry point the word at the stack pointer is argc, not a return address */
  entryHook = Interceptor.attach(ptr(entry), function () {
    if (entryFollow === null || Process.getCurrentThreadId() !== slot.tid)
      return;
    entryFollow = null;
    cm.altstack();   // crash.js: the thread's own alternate signal stack
    Stalker.follow(slot.tid, followOptions(t.ctx));
    setTimeout(() => {
      if (entryHook !== null) {
        entryHook.detach();
        entryHook = null;
      }
    }, 0);
  });
}

/* --only: give the transform the address ranges of the named modules; it flags every
 * other block FOREIGN, and decode reports only branches that leave from or land in a
 * named module. The other modules still run under Stalker: excluding them
 * (Stalker.exclude) would run them natively, but then nothing they call back is traced
 * either, and main itself is called back from libc. */
function restrictTo(only) {
  const ranges = [];
  const matched = new Set();
  for (const m of Process.enumerateModules()) {
    const name = only.find(n => m.name === n || m.path === n);
    if (name !== undefined) {
      matched.add(name);
      ranges.push([m.base, m.base.add(m.size)]);
    }
  }
  ranges.sort((a, b) => a[0].compare(b[0]));
  const buf = Memory.alloc(Math.max(16, ranges.length * 16));
  ranges.forEach(([lo, hi], i) => {
    buf.add(16 * i).writePointer(lo);
    buf.add(16 * i + 8).writePointer(hi);
  });
  keep.push(buf);
  cfg.add(CFG.ranges).writePointer(buf);
  cfg.add(CFG.nranges).writeU32(ranges.length);
  return Array.from(matched);
}

/* Stalker stops following a thread when it calls glibc's __call_tls_dtors (its idea of
 * "the thread is exiting"), but exit() calls it too, before the program's destructors
 * and atexit handlers run. Follow the thread again when it returns from there. The
 * hook is a C listener (signals.c, bt_tls_dtors_on_leave) that calls tlsDtorsLeft only
 * in the traced process: every forked child that exits passes here, and a JS listener
 * in a child deadlocked it on a lock a thread of Frida's held at the fork (a bash loop
 * of subshells, attached: its child stuck in exit(), its parent in waitpid). */
function tlsDtorsLeft() {
  const tid = Process.getCurrentThreadId();
  const t = followed.get(tid);
  if (t !== undefined && !stopping)
    Stalker.follow(tid, followOptions(t.ctx));
}

function refollowAfterTlsDtors() {
  const address = Module.findGlobalExportByName('__call_tls_dtors');
  if (address === null)
    return;
  hook(address, { onLeave: cm.bt_tls_dtors_on_leave });
}

/* A thread that forks while Stalker follows it leaves a child that crashes at once
 * (Frida 17.26, reproduced with no transform at all). So the forking thread stops
 * being followed around fork(); the parent follows itself again afterwards, the
 * child (untraced anyway) runs natively. Only the entry is JS (a probe: no onLeave);
 * the exit is C (signals.c, bt_fork_leave), so that the child runs no JS at all. */
const forking = new Map();   // tid -> its thread state, between fork's entry and exit

function forkParent() {
  const tid = Process.getCurrentThreadId();
  const t = forking.get(tid);
  forking.delete(tid);
  childDone(tid);
  if (t !== undefined && !stopping)
    Stalker.follow(tid, followOptions(t.ctx));
}

/* Children (backends/stalker/children.py): before fork, vfork or posix_spawn makes its
 * system call, the calling thread tells the tracer and waits: the tracer seizes it with
 * ptrace, and the kernel hands it the child stopped at birth. A fork child is followed
 * from `ret` (fork's return address) by an agent of its own; a vfork child from its
 * exec. Once the call returned in the parent, the tracer hears of it (a failed fork
 * made no child: it lets the thread go). Without following, the tracer only counts. */
const childAsked = new Set();   // tids whose fork the tracer was told of

function childStart(tid, ret) {
  if (stopping || inChild() || !followed.has(tid))
    return;
  if (!params.followChildren) {
    send({ type: 'child' });
    return;
  }
  const reply = ask('fork', { tid: tid, ret: ret === null ? null : ret.toString() });
  if (reply !== null && reply.ok === true)
    childAsked.add(tid);
}

function childDone(tid) {
  if (childAsked.delete(tid))
    ask('fork-done', { tid: tid });
}

function followChildren() {
  for (const name of ['posix_spawn', 'posix_spawnp']) {
    const address = Module.findGlobalExportByName(name);
    if (address !== null)
      hook(address, {
        onEnter() { childStart(Process.getCurrentThreadId(), null); },
        onLeave() { if (!inChild()) childDone(Process.getCurrentThreadId()); },
      });
  }
  const vfork = Module.findGlobalExportByName('vfork');
  if (vfork !== null)   // a probe: the stack is shared with the child, left alone
    hook(vfork, function () {
      const tid = Process.getCurrentThreadId();
      const t = followed.get(tid);
      if (t !== undefined && !inChild())
        t.ctx.add(TH.vforkArmed).writeU64(1);   // vfork.c: the child leaves Stalker
      childStart(tid, null);
      childAsked.delete(tid);   // no exit hook: nothing to say
    });
}

function unfollowAroundFork() {
  const address = Module.findGlobalExportByName('fork');
  if (address === null)
    return;
  hook(address, function () {
    const tid = Process.getCurrentThreadId();
    const t = followed.get(tid);
    if (t !== undefined && !stopping) {
      Stalker.unfollow(tid);
      forking.set(tid, t);
      childStart(tid, this.returnAddress);
    }
  });
  hook(address, { onLeave: cm.bt_fork_leave });
}

/* exec: the new image replaces this agent, so the tracer follows it from outside
 * (backends/stalker/execs.py). Before the system call runs, the calling thread tells
 * the tracer and waits: the tracer seizes it with ptrace, catches the new image at its
 * entry point and loads the agent again, which goes on in the same store slot. Every
 * record of the old image is in the shared store already (each block writes there).
 * If the exec fails (onLeave is reached only then), the tracer lets the thread go and
 * the trace goes on here. Only the main thread's exec of the process we trace is
 * followed: in a forked or vfork child (posix_spawn) the agent is a copy nobody reads. */
function ask(kind, fields) {
  const key = kind + ':' + Process.getCurrentThreadId();
  let reply = null;
  send(Object.assign({ type: kind, key: key }, fields));
  recv(key, m => { reply = m; }).wait();
  return reply;
}

/* execve's hooks are C listeners (signals.c, bt_exec_on_enter/leave) that call these
 * only in the traced process itself: a forked child (which execs more often than not)
 * runs no JS, for the reason given at unfollowAroundFork. */
const execAsked = new Set();   // tids whose exec the host was told of

function execEnter(pathPointer) {
  const tid = Process.getCurrentThreadId();
  if (stopping || !followed.has(tid))
    return;
  let path = null;
  try {
    path = pathPointer.readUtf8String();
  } catch (e) {
    path = null;
  }
  if (tid !== Process.id) {
    send({ type: 'note', text: `exec of ${path} from thread ${tid}, not the main ` +
           'thread: the new image is not followed' });
    return;
  }
  const reply = ask('exec', { tid: tid, path: path });
  if (reply !== null && reply.ok === true)
    execAsked.add(tid);
}

function execFailed(errno) {
  if (execAsked.delete(Process.getCurrentThreadId()))
    ask('exec-failed', { errno: errno });
}

function followExec() {
  const address = Module.findGlobalExportByName('execve');
  if (address === null)
    return;
  hook(address, { onEnter: cm.bt_exec_on_enter, onLeave: cm.bt_exec_on_leave });
}

/* Threads made with glibc's clone() rather than pthread_create: Stalker sends a clone's
 * child back to native code and Frida's thread observer does not see it. So the parent
 * (in clone's onEnter) makes the child start in bt_clone_gate (signals.c) instead of its
 * start routine; once clone has returned the child's tid, the parent gets it a slot and
 * follows it (onLeave), then opens the gate: the child runs its routine under Stalker
 * from its first instruction. Only clones that share our memory (CLONE_VM) and are not
 * vfork-like (CLONE_VFORK: posix_spawn, which execs at once) are threads of ours.
 *
 * Without CLONE_SETTLS the child shares the parent's thread pointer, hence its
 * pthread-specific values, and Stalker keeps "the context of the current thread" in one
 * (a GPrivate): setting up the child (in the child) overwrites the parent's. The parent
 * then drove the child's context as its own (unfollowing it at __call_tls_dtors, among
 * others): the program died of SIGSEGV now and then (session 3). So the parent notes
 * its values before following the child, waits until the child runs under Stalker
 * (past that setup), and puts back those that changed. The child never asks for its
 * own context afterwards: it ends with a raw exit system call. And no JavaScript may run
 * in the child (the JS lock is a recursive mutex: with the parent's thread descriptor
 * the child took it for its own, and both ran in the JS runtime at once): its slot is
 * marked (TH.sharesTls), so that its transform never asks the cloak (recorder.c). */
const CLONE_VM = 0x100, CLONE_VFORK = 0x4000, CLONE_SETTLS = 0x80000;
const GATE = { fn: 0, arg: 8, ready: 16, entered: 20, go: 24, size: 32 };
const PTHREAD_KEYS = 1024;   // BT_PTHREAD_KEYS (signals.c)

function snapshotKeys() {
  const values = Memory.alloc(8 * PTHREAD_KEYS);
  cm.keysSave(values);
  return values;
}

function followCloneChildren() {
  const address = Module.findGlobalExportByName('clone');
  if (address === null)
    return;
  cm.keysSave = new NativeFunction(cm.bt_clone_keys_save, 'void', ['pointer']);
  cm.keysRestore = new NativeFunction(cm.bt_clone_keys_restore, 'void', ['pointer']);
  cm.cloneWait = new NativeFunction(cm.bt_clone_wait_entered, 'int', ['pointer']);
  hook(address, {
    onEnter(args) {
      this.gate = null;
      const flags = args[2].toUInt32();
      // a process, not a thread: not followed (docs/stalker.md, "Children"); say so
      this.process = !args[0].isNull() && (flags & CLONE_VM) === 0 && !inChild();
      if (args[0].isNull() || (flags & CLONE_VM) === 0 || (flags & CLONE_VFORK) !== 0 ||
          stopping || inChild())
        return;
      const gate = Memory.alloc(GATE.size);
      gate.add(GATE.fn).writePointer(args[0]);
      gate.add(GATE.arg).writePointer(args[3]);
      keep.push(gate);      // the child reads it after clone returns
      args[0] = cm.bt_clone_gate;
      args[3] = gate;
      this.gate = gate;
      this.shared = (flags & CLONE_SETTLS) === 0;
    },
    onLeave(retval) {
      if (this.process && retval.toInt32() > 0)
        send({ type: 'note', text: `pid ${retval.toInt32()} (made by clone() without ` +
               'CLONE_VM in pid ' + Process.id + ') is not followed by the stalker ' +
               'backend: it ran untraced (the ptrace backend follows it)' });
      const gate = this.gate;
      if (gate === null)
        return;
      const tid = retval.toInt32();
      if (tid <= 0)
        return;     // no child: nobody reads the gate
      let values = null;
      let open = 2;   // the child runs its routine at once, natively
      try {
        values = this.shared ? snapshotKeys() : null;
        followNew([tid], true);   // no JS in it, whatever its thread pointer
        if (followed.has(tid))
          open = 1;
      } finally {
        gate.add(GATE.ready).writeS32(open);
        if (open === 1) {
          cm.cloneWait(gate);
          if (values !== null)
            cm.keysRestore(values);
          gate.add(GATE.go).writeS32(1);
        }
      }
    },
  });
}

/* The way into a signal handler under Stalker (signals.c, bt_run_under_stalker), in a
 * page of Frida's own (cloaked: the transform records nothing of it), called as
 * enter(sig, info, uctx, handler, ret_lookup):
 *     push rbp; mov rbp, rsp; and rsp, -16
 *     lea rax, [rip+after]; push rax       the handler returns to `after`
 *     push rcx; jmp r8                     a `ret` lookup of the thread's pops the handler
 *   after:                                 (reached under Stalker)
 *     mov rsp, rbp; pop rbp; ret */
function handlerEntry() {
  const page = mmap(NULL, PAGE, PROT_RW, MAP_PRIVATE | MAP_ANON, -1, 0);
  page.writeByteArray([
    0x55, 0x48, 0x89, 0xe5, 0x48, 0x83, 0xe4, 0xf0,
    0x48, 0x8d, 0x05, 0x05, 0x00, 0x00, 0x00, 0x50, 0x51, 0x41, 0xff, 0xe0,
    0x48, 0x89, 0xec, 0x5d, 0xc3,
  ]);
  libc.mprotect(page, PAGE, PROT_RX);
  Cloak.addRange({ base: page, size: PAGE });
  return page;
}

/* Attached (not our child): the tracer cannot wait for the exit status, so the agent
 * reports the code passed to _exit, synchronously, before the process is gone. The hook
 * is a C listener (signals.c, bt_exit_on_enter) that calls exitEnter only in the traced
 * process: a forked child (a subshell of bash, every `( )`) ends in _exit too, and JS in
 * a child deadlocked it on a lock a thread of Frida's held at the fork, and its parent
 * with it (the hook was JS until 2026-12-07). */
function exitEnter(code) {
  send({ type: 'exit', code: code & 0xff });
  recv('exit-ack', () => {}).wait();
}

function hookExit() {
  const address = Module.findGlobalExportByName('_exit');
  if (address === null)
    return;
  hook(address, { onEnter: cm.bt_exit_on_enter });
}

/* The main thread's follow from its entry probe, at once, from where it is (false: the
 * probe has fired, or we stop). */
function followNow() {
  const follow = entryFollow;
  entryFollow = null;
  if (follow === null || stopping)
    return false;
  follow();
  return true;
}

/* The thread observer: existing threads are reported from the thread that attaches
 * it, new ones from themselves. Until init, what it is told is kept (prepare). */
function threadAdded(thread) {
  const mine = thread.id === Process.getCurrentThreadId();
  if (earlyThreads !== null) {
    earlyThreads.push({ id: thread.id, mine: mine, tool: mine && Cloak.hasCurrentThread() });
    return;
  }
  if (mine && Cloak.hasCurrentThread()) {
    noteTool(thread.id);
    return;
  }
  if (mine)
    cm.altstack();   // crash.js: the thread's own alternate signal stack
  if (mine || params.entry === null)
    followNew([thread.id]);
}

function threadRemoved(thread) {
  if (followed.has(thread.id) && !inChild())
    send({ type: 'gone', tid: thread.id });
}

rpc.exports = {
  /* Before init, for a program we started (stopped at its entry, so no thread of its
   * own can come): attach the thread observer now, while the host is still busy. Its
   * attach enumerates the threads there, each through a ptrace helper of Frida's:
   * 5-30 ms that init then need not wait for. */
  prepare() {
    if (threadObserver !== null || params !== null)
      return;
    earlyThreads = [];
    threadObserver = Process.attachThreadObserver({ onAdded: threadAdded,
                                                    onRemoved: threadRemoved });
  },

  init(p) {
    params = p;
    if (p.trust !== null && p.trust !== undefined)
      Stalker.trustThreshold = p.trust;
    if (p.fastFill)
      fastFillAt = fastFill(p.fillOffset);   // fill.js: before any thread is followed
    if (p.fastFill)
      capTablesAt = copyCapstoneTables(p.capOffset);   // capcache.js: the same
    libc.open = fn('open', 'int', ['pointer', 'int', 'int']);
    libc.close = fn('close', 'int', ['int']);
    libc.mmap = fn('mmap', 'pointer', ['pointer', 'size_t', 'int', 'int', 'int', 'int64']);
    libc.munmap = fn('munmap', 'int', ['pointer', 'size_t']);
    libc.mprotect = fn('mprotect', 'int', ['pointer', 'size_t', 'int']);
    libc.getpid = fn('getpid', 'int', []);
    libc.pread = fn('pread', 'int64', ['int', 'pointer', 'size_t', 'int64']);
    params.pid = libc.getpid();

    cfg = Memory.alloc(CFG.size);   // CModule data is read-only: the config lives here
    cfg.add(CFG.smc).writeU32(p.trust === -1 ? 1 : 0);   // no note of code from no file
    cfg.add(CFG.inlinePaths).writeU32(p.trust === 0 ? 1 : 0);   // emit.c, emit_stub
    xstate = Memory.alloc(XS.size);
    xstate.add(XS.avx512).writeU32(p.avx512 ? 1 : 0);
    const forkParentCallback = new NativeCallback(forkParent, 'void', []);
    keep.push(forkParentCallback);
    const execEnterCallback = new NativeCallback(execEnter, 'void', ['pointer']);
    const execFailedCallback = new NativeCallback(execFailed, 'void', ['int']);
    const exitEnterCallback = new NativeCallback(exitEnter, 'void', ['int']);
    const tlsDtorsCallback = new NativeCallback(tlsDtorsLeft, 'void', []);
    const agentPid = Memory.alloc(4);
    agentPid.writeS32(params.pid);
    keep.push(execEnterCallback, execFailedCallback, exitEnterCallback, tlsDtorsCallback,
              agentPid);
    cm = new CModule(p.source, Object.assign(unhookSymbols(), {   // forkchild.js
      bt_config: cfg,
      bt_xstate: xstate,
      kill: Module.getGlobalExportByName('kill'),
      bt_fork_parent: forkParentCallback,
      bt_exec_enter: execEnterCallback,
      bt_exec_failed: execFailedCallback,
      bt_exit_enter: exitEnterCallback,
      bt_tls_dtors_left: tlsDtorsCallback,
      bt_agent_pid: agentPid,
      __errno_location: Module.getGlobalExportByName('__errno_location'),
      syscall: Module.getGlobalExportByName('syscall'),
      pthread_getspecific: Module.getGlobalExportByName('pthread_getspecific'),
      pthread_setspecific: Module.getGlobalExportByName('pthread_setspecific'),
    }));
    // first of our hooks: from here on a forked child puts back what hooks patched
    // (forkchild.js): ours as hook() makes them, Frida's (made before us) at once
    unfollowAroundFork();
    noteFridaHooks();
    cm.threadInit = new NativeFunction(cm.bt_thread_init, 'void',
        ['pointer', 'pointer', 'pointer', 'uint64', 'uint64', 'uint', 'uint', 'uint64']);
    if (p.avx512)
      xstateTimer = setInterval(noteXstate, 100);
    cm.updateModules = new NativeFunction(cm.bt_update_modules, 'void', []);
    cm.registerThread = new NativeFunction(cm.bt_register_thread, 'void', ['pointer']);
    cm.signalBlock = new NativeFunction(cm.bt_signal_block, 'uint', ['pointer']);
    cm.cacheClear = new NativeFunction(cm.bt_cache_clear, 'void', ['pointer']);
    cm.altstack = new NativeFunction(cm.bt_altstack, 'void', []);
    cm.onstack = new NativeFunction(cm.bt_onstack, 'int', ['int']);

    const fd = openFile(p.tablePath);
    tablePtr = mmap(NULL, p.tableBytes, PROT_RW, MAP_SHARED, fd, 0);
    libc.close(fd);
    cfg.add(CFG.table).writePointer(tablePtr);
    cfg.add(CFG.blocks).writePointer(tablePtr.add(64));
    cfg.add(CFG.capacity).writeU64(uint64(p.tableCapacity));
    cfg.add(CFG.bmi2).writeU32(p.bmi2 ? 1 : 0);
    gsStubs();
    cfg.add(CFG.hostPid).writeU32(p.hostPid);
    const hostStat = Memory.allocUtf8String(`/proc/${p.hostPid}/stat`);
    keep.push(hostStat);
    cfg.add(CFG.hostStat).writePointer(hostStat);
    cm.tracerGone = new NativeFunction(cm.bt_tracer_gone, 'int', []);
    const isTool = new NativeCallback(address => Cloak.hasRangeContaining(address) ? 1 : 0,
                                      'int', ['pointer']);
    keep.push(isTool);
    cfg.add(CFG.isTool).writePointer(isTool);
    cm.updateModules();
    cfg.add(CFG.marker).writeU32((((Math.random() * 0x100000000) >>> 0) | 1) >>> 0);
    if (p.retcache && p.handlers)
      cfg.add(CFG.enter).writePointer(handlerEntry());

    const threads = Memory.alloc(8 * THREAD_SLOTS);
    const signals = Memory.alloc(16 * NSIG);
    keep.push(threads, signals);
    cfg.add(CFG.threads).writePointer(threads);
    const tools = Memory.alloc(4 * TOOL_SLOTS);
    keep.push(tools);
    cfg.add(CFG.tools).writePointer(tools);
    for (const tid of p.foreign)
      foreign.add(tid);
    for (const tid of taskIds())
      if (isOurs(tid) || foreign.has(tid))
        noteTool(tid);
    cfg.add(CFG.signals).writePointer(signals);
    const matched = p.only.length > 0 ? restrictTo(p.only) : [];
    excludeOurModules(p.ours);   // ours.js
    libc.sigaction = fn('sigaction', 'int', ['int', 'pointer', 'pointer']);
    if (p.started)   // a program we started: in our process group, Ctrl-C hits it too
      standInForSigint();
    wrapSignalHandlers(signals);
    refollowAfterTlsDtors();
    const dlopenHooked = oursRanges !== null && oursRanges.length > 0;   // ours.js
    watchHookedReturns(dlopenHooked ? ['dlopen', 'dlmopen'] : []);   // crash.js
    followChildren();
    followCloneChildren();
    followExec();
    armTrigger(p.trigger);   // trigger.js

    Process.setExceptionHandler(onException);
    cm.onstack(SIGSEGV);   // crash.js: a stack overflow is reported too
    cm.onstack(SIGBUS);
    if (p.entry !== null) {
      for (const slot of p.slots) {
        if (slot.tid !== Process.id)
          continue;
        if (p.parked)   // hold.py: the code there comes back first; then arm()
          parkedSlot = slot;
        else
          followAtEntry(p.entry, slot);
      }
    }
    if (threadObserver === null) {
      threadObserver = Process.attachThreadObserver({ onAdded: threadAdded,
                                                      onRemoved: threadRemoved });
    } else {   // attached by prepare(): what it was told meanwhile
      const early = earlyThreads;
      earlyThreads = null;
      for (const t of early) {
        if (t.tool)
          noteTool(t.id);
        else if (t.mine || p.entry === null)   // (a started program runs no thread yet)
          followNew([t.id]);
      }
    }
    // the observer is told of every module already there, at once: one update and one
    // message for all of them (the host reads the maps again for each: ~1 ms apiece)
    let observing = false;
    moduleObserver = Process.attachModuleObserver({
      onAdded(module) {
        if (!observing)
          return;
        cm.updateModules();
        if (!inChild())
          send({ type: 'modules' });
      },
    });
    observing = true;
    cm.updateModules();
    if (!inChild())
      send({ type: 'modules' });
    if (!p.started)  // attached (also in an image an exec brought): no exit status for us
      hookExit();
    return {
      followed: Array.from(followed.keys()),
      onlyMatched: matched,
      modules: Process.enumerateModules().map(m => m.name),
      fillOffset: fastFillAt,
      capOffset: capTablesAt,
    };
  },

  /* The main thread waited parked at the entry (hold.py); the host has put its code
   * back and holds it there: arm the entry probe, to follow it from there when it runs
   * (now: it was not at the entry; follow it from where it is, at once). */
  arm(now) {
    const slot = parkedSlot;
    parkedSlot = null;
    if (slot === null || stopping)
      return false;
    followAtEntry(params.entry, slot);
    if (now)
      followNow();
    return true;
  },

  /* The program ran before Frida held it (the host's resume failed): if the main thread
   * has not reached its entry probe yet, it may have passed it; follow it from where it
   * is now (true), rather than not at all. */
  catchUp() {
    return followNow();
  },

  stop() {
    noteXstate();
    if (xstateTimer !== null)
      clearInterval(xstateTimer);
    return stopRecording();
  },

  /* Frida calls this before it unloads the script: when the tracer died (SIGKILL)
   * without stopping us, and also when the program exits (from exit(), before the
   * destructors and atexit handlers run). Only in the first case stop recording, the
   * same way stop() does, so that the program runs on, and remove the files the tracer
   * can no longer remove; at an exit the tracer is alive and the program's last
   * branches must still be recorded. */
  dispose() {
    noteXstate();
    if (stopping || cm === null || cm.tracerGone() === 0)
      return;
    stopRecording();
    removeTracerFiles();
  },
};
