/*
 * branchtrace Stalker agent, part 3 of 4: a fatal exception, reported before the
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
  return { id: id, start: b.readU64().toString(), end: b.add(16).readU64().toString() };
}

/* The instruction of the block whose bytes the faulting slab instruction has: Stalker
 * copies most instructions unchanged. null when none or several match. */
function matchInstruction(block, pc) {
  let at = ptr(block.start);
  const end = ptr(block.end);
  const hits = [];
  try {
    while (at.compare(end) < 0) {
      const insn = Instruction.parse(at);
      const bytes = new Uint8Array(at.readByteArray(insn.size));
      const slab = new Uint8Array(pc.readByteArray(insn.size));
      if (bytes.every((v, i) => v === slab[i]))
        hits.push(at);
      at = insn.next;
    }
  } catch (e) {
    return null;
  }
  return hits.length === 1 ? hits[0] : null;
}

function onException(details) {
  if (inChild())
    return false;
  noteXstate();   // agent.js: the note reaches the tracer before the crash report
  const tid = Process.getCurrentThreadId();
  const info = {
    type: 'crash', tid: tid, kind: details.type, pc: details.address.toString(),
    memory: details.memory ? details.memory.address.toString() : null,
    block: null, realPc: null,
  };
  try {
    if (followed.has(tid)) {
      info.block = lastBlockOf(tid);
      if (info.block !== null) {
        const real = matchInstruction(info.block, details.address);
        info.realPc = real !== null ? real.toString() : null;
      }
    } else {
      info.realPc = info.pc;   // not under Stalker: the pc is the program's
    }
  } catch (e) {
    info.error = String(e);
  }
  send(info);
  recv('crash-ack', () => {}).wait();
  return false;   // let the program die of its signal (or its own handler run)
}
