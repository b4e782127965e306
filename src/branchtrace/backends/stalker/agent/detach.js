/*
 * branchtrace Stalker agent, part 4 of 6: stopping the recording while the program goes
 * on (docs/stalker.md, "Detaching safely" and "When branchtrace itself dies").
 */

/* Stop recording; the program goes on. Stalker lets go of a thread only at its next
 * block switch (and a thread may sit in a system call inside Stalker's code for a
 * long time), so code of ours may still run after we leave: its memory stays valid,
 * but private. */
function stopRecording() {
  stopping = true;
  for (const o of [threadObserver, moduleObserver, entryHook]) {
    if (o !== null)
      o.detach();
  }
  threadObserver = moduleObserver = entryHook = null;
  withSignalsBlocked(() => {   // signals.js: another thread's unfollow may ptrace it
    for (const tid of followed.keys())
      Stalker.unfollow(tid);
  });
  /* returns go back through Stalker's code, where it lets a thread go */
  for (const t of followed.values())
    cm.cacheClear(t.ctx);
  unstickLoops();
  restoreSignalHandlers();
  const stubs = leftoverStubs();
  const anon = MAP_PRIVATE | MAP_ANON | MAP_FIXED | MAP_NORESERVE;
  for (const t of followed.values()) {
    t.ctx.add(TH.flush).writePointer(stubs.clear);
    if (params.mode === 2) {
      const bytes = 4 * params.chunk;
      const sink = mmap(NULL, bytes, PROT_RW, MAP_PRIVATE | MAP_ANON | MAP_NORESERVE, -1, 0);
      t.ctx.add(TH.sinkEnd).writePointer(sink.add(bytes));
      t.ctx.add(TH.slow).writePointer(stubs.discard);
    }
    /* the store's pages go back to the tracer; late writes land in private memory */
    mmap(t.base, params.regionBytes + PAGE, PROT_RW, anon, -1, 0);
  }
  mmap(tablePtr, params.tableBytes, PROT_RW, anon, -1, 0);
  /* only now (their writes go to private memory): producers waiting for the consumer
   * stop waiting */
  cfg.add(CFG.abort).writeU32(1);
  let busy = true;   // no thread may be inside bt_stream_slow or bt_sigint when the
  for (let i = 0; i < 600 && busy; i++) {   // CModule goes
    Thread.sleep(0.002);
    busy = Array.from(followed.values()).some(t => t.ctx.add(TH.inSlow).readS32() !== 0) ||
        cfg.add(CFG.inSigint).readS32() !== 0;
  }
  Stalker.garbageCollect();
  return { busy: busy };
}

/* A thread that only takes direct jumps (a spin loop, a program hung in a loop) never
 * comes back to Stalker's code, where Stalker lets a thread go: the detach would wait
 * for ever. A thread still recording after the unfollow is in such a loop, or on its
 * way to the next return: its newest block is invalidated, which sends the next pass
 * through it into Stalker, and out (Stalker.unfollow was asked first). Looked for every
 * 2 ms for up to 30 ms: on a loaded machine a spinning thread may not run for a few
 * milliseconds. Before the store and the block table go: they name the block. */
function unstickLoops() {
  const newest = new NativeFunction(cm.bt_newest_block, 'uint64', ['pointer']);
  const seen = new Map(), done = new Set();
  for (const [tid, t] of followed)
    seen.set(tid, written(t));
  for (let round = 0; round < 15 && done.size < followed.size; round++) {
    Thread.sleep(0.002);
    for (const [tid, t] of followed) {
      if (done.has(tid) || written(t) === seen.get(tid))
        continue;   // never ran, asleep in a system call, or out already (so far)
      done.add(tid);
      const start = newest(t.ctx);
      if (start.equals(0))
        continue;
      try {
        withSignalsBlocked(() => Stalker.invalidate(tid, ptr(start.toString())));
      } catch (e) {
        /* the thread is gone */
      }
    }
  }
}

/* The records a thread's block-start code wrote (its entry's third word). */
function written(t) {
  return t.ctx.add(TH.entry).readPointer().add(16).readU64().toNumber();
}

/* The store, the block table and the check file of a tracer that died (they live in
 * /dev/shm: memory), and the private directory it made for them (branchtrace-*). */
function removeTracerFiles() {
  const unlink = fn('unlink', 'int', ['pointer']);
  const rmdir = fn('rmdir', 'int', ['pointer']);
  for (const path of [params.storePath, params.tablePath, params.checkPath]) {
    if (path !== null)
      unlink(Memory.allocUtf8String(path));
  }
  const dir = params.storePath.substring(0, params.storePath.lastIndexOf('/'));
  if (dir.substring(dir.lastIndexOf('/') + 1).startsWith('branchtrace-'))
    rmdir(Memory.allocUtf8String(dir));
}

/* After stop, in memory of our own that outlives the CModule (rdi = the context):
 *   +0  what a full chunk calls instead of bt_stream_slow: start over in a private sink
 *       mov rax, [rdi+chunk]; neg rax; mov [rdi+cursor], rax
 *       mov rax, [rdi+sink_end]; mov [rdi+chunk_end], rax; ret
 *   +32 what pending signal records call instead of bt_flush_pending: forget them
 *       mov qword [rdi+nopend], 1; mov dword [rdi+npending], 0; ret */
function leftoverStubs() {
  const page = mmap(NULL, PAGE, PROT_RW, MAP_PRIVATE | MAP_ANON, -1, 0);
  page.writeByteArray([
    0x48, 0x8b, 0x47, TH.chunk, 0x48, 0xf7, 0xd8, 0x48, 0x89, 0x47, TH.cursor,
    0x48, 0x8b, 0x87, TH.sinkEnd, 0, 0, 0, 0x48, 0x89, 0x47, TH.chunkEnd, 0xc3,
  ]);
  page.add(32).writeByteArray([
    0x48, 0xc7, 0x47, TH.nopend, 1, 0, 0, 0,
    0xc7, 0x87, TH.npending, 0, 0, 0, 0, 0, 0, 0, 0xc3,
  ]);
  libc.mprotect(page, PAGE, PROT_RX);
  return { discard: page, clear: page.add(32) };
}
