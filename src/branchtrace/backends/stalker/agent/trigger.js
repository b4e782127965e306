/*
 * branchtrace Stalker agent, part 6 of 6: `run --trigger` (cli/_snapshots.py). A probe
 * on the function (the host found its address with our symbolizer); at the calls asked
 * for, the calling thread's registers and a copy of its stack (crash.js, stackOf) go to
 * the host, which copies the store while the thread waits for its answer.
 */

/* The probe itself is C (a CModule of its own): a JS probe cost ~5 us a call under
 * Stalker (1M calls of a small function: 1.5 s -> 6.5 s); the C one counts the calls
 * and calls into JS (triggerFire) only for those asked for. state: nth, every, limit,
 * calls, done. The probe stays to the end: detached while the program's threads run
 * under Stalker, their copies of the hooked code still jumped to it (an attached
 * program died of SIGSEGV, also with Stalker.invalidate); past the last call asked for
 * it returns at once. */
const TRIGGER_C = `
#include <gum/guminterceptor.h>

extern volatile gint bt_trigger_state[5];
extern void bt_trigger_fire (GumCpuContext * cpu, gint n);

void
bt_trigger_probe (GumInvocationContext * ic)
{
  gint nth, every, limit, n;

  if (bt_trigger_state[4])
    return;
  nth = bt_trigger_state[0];
  every = bt_trigger_state[1];
  limit = bt_trigger_state[2];
  n = g_atomic_int_add (&bt_trigger_state[3], 1) + 1;
  if (n >= nth + (every ? limit - 1 : 0))
    bt_trigger_state[4] = 1;
  if (every ? (n >= nth && n < nth + limit) : n == nth)
    bt_trigger_fire (ic->cpu_context, n);
}
`;

/* GumX64CpuContext: rip, r15, r14, ..., rax (8 bytes each), by name */
const GUM_CPU_FIELDS = ['rip', 'r15', 'r14', 'r13', 'r12', 'r11', 'r10', 'r9', 'r8', 'rdi',
                        'rsi', 'rbp', 'rsp', 'rbx', 'rdx', 'rcx', 'rax'];

function cpuContextAt(p) {
  const context = {};
  GUM_CPU_FIELDS.forEach((name, i) => { context[name] = p.add(8 * i).readPointer(); });
  return context;
}

function armTrigger(t) {
  if (t === null || t === undefined)
    return;
  const address = ptr(t.address);
  const state = Memory.alloc(4 * 5);
  [t.nth, t.every ? 1 : 0, t.limit, 0, 0].forEach((v, i) => state.add(4 * i).writeS32(v));
  const fire = new NativeCallback((cpu, n) => {
    if (inChild() || stopping)
      return;
    const info = { type: 'snapshot', tid: Process.getCurrentThreadId(), call: n,
                   pc: address.toString() };
    let stack = null;
    try {
      [info.registers, stack, info.stackBase] = stackOf(cpuContextAt(cpu), address.toString());
    } catch (e) {
      info.stackError = String(e);
    }
    send(info, stack);
    recv('snapshot-ack', () => {}).wait();
  }, 'void', ['pointer', 'int']);
  const probe = new CModule(TRIGGER_C, { bt_trigger_state: state, bt_trigger_fire: fire });
  keep.push(state, fire, probe);
  hook(address, probe.bt_trigger_probe);   // a probe: the stack is left alone
}
