/*
 * branchtrace Stalker agent: the hooked functions a forked child puts back as they were
 * (forkchild.c, docs/stalker.md "fork").
 */

const UNHOOK_MAX = 64, UNHOOK_SIZE = 24;   // BT_UNHOOK_MAX, sizeof (BtUnhook)
const O_RDONLY = 0;
/* Functions Frida hooks in the program before our script runs: its exit monitor's
 * (exit, _exit, abort) and its exceptor's replacements of signal and sigaction. Ours
 * are noted by hook() as they are made. */
const FRIDA_HOOKED = ['exit', '_exit', 'abort', 'signal', 'sigaction'];
const unhooks = Memory.alloc(UNHOOK_MAX * UNHOOK_SIZE);
const unhooksN = Memory.alloc(4);
const unhooked = new Set();

/* The CModule's symbols for the table. */
function unhookSymbols() {
  return { bt_unhooks: unhooks, bt_unhooks_n: unhooksN };
}

/* Interceptor.attach, with the function noted first: a child forked at any moment
 * after the note, the hook made or not yet, puts the file's bytes back (the same bytes
 * when the hook was not made yet). Every hook of ours goes through here. */
function hook(address, listener) {
  noteHooked(address, false);
  return Interceptor.attach(address, listener);
}

/* Frida's hooks, made before ours (after the fork hook: children forked from then on
 * put them back). */
function noteFridaHooks() {
  for (const name of FRIDA_HOOKED) {
    const address = Module.findGlobalExportByName(name);
    if (address !== null)
      noteHooked(address, true);
  }
}

/* Note a function with its first 16 bytes as its file has them. `patched`: only if it
 * starts with a jump now (e9 rel32, or ff 25 for one that is far) and differs from the
 * file (Frida's, already made); else before a hook of ours is made. A file that cannot
 * be read adds nothing. */
function noteHooked(address, patched) {
  const key = address.toString();
  const n = unhooksN.readU32();
  if (unhooked.has(key) || n >= UNHOOK_MAX)
    return;
  const range = Process.findRangeByAddress(address);
  if (range === null || range.file === undefined)
    return;
  const offset = range.file.offset + address.sub(range.base).toUInt32();
  const original = fileBytes(range.file.path, offset, 16);
  if (original === null)
    return;
  if (patched) {
    const now = new Uint8Array(address.readByteArray(16));
    if (now[0] !== 0xe9 && !(now[0] === 0xff && now[1] === 0x25))
      return;
    if (original.every((b, i) => b === now[i]))
      return;
  }
  const entry = unhooks.add(n * UNHOOK_SIZE);
  entry.writePointer(address);
  entry.add(8).writeByteArray(original);
  unhooksN.writeU32(n + 1);   // last: a child forked meanwhile sees whole entries only
  unhooked.add(key);
}

function fileBytes(path, offset, size) {
  const fd = libc.open(Memory.allocUtf8String(path), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0)
    return null;
  const buf = Memory.alloc(size);
  const got = libc.pread(fd, buf, size, offset);
  libc.close(fd);
  return Number(got) === size ? Array.from(new Uint8Array(buf.readByteArray(size))) : null;
}
