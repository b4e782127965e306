/*
 * branchtrace Stalker agent, part 6 of 6: `run --trigger` (cli/_snapshots.py). A probe
 * on the function (the host found its address with our symbolizer); at the calls asked
 * for, the calling thread's registers and a copy of its stack (crash.js, stackOf) go to
 * the host, which copies the store while the thread waits for its answer.
 */

let triggerCalls = 0;

function armTrigger(t) {
  if (t === null || t === undefined)
    return;
  const address = ptr(t.address);
  let done = false;
  /* The probe stays to the end: detached while the program's threads run under Stalker,
   * their copies of the hooked code still jumped to it (an attached program died of
   * SIGSEGV, also with Stalker.invalidate). Past the last call asked for it returns at
   * once. */
  Interceptor.attach(address, function () {   // a probe: the stack is left alone
    if (done || inChild() || stopping)
      return;
    triggerCalls++;
    const n = triggerCalls;
    const fires = t.every ? n >= t.nth && n < t.nth + t.limit : n === t.nth;
    if (n >= t.nth + (t.every ? t.limit - 1 : 0))
      done = true;
    if (!fires)
      return;
    const info = { type: 'snapshot', tid: Process.getCurrentThreadId(), call: n,
                   pc: address.toString() };
    let stack = null;
    try {
      [info.registers, stack, info.stackBase] = stackOf(this.context, address.toString());
    } catch (e) {
      info.stackError = String(e);
    }
    send(info, stack);
    recv('snapshot-ack', () => {}).wait();
  });
}
