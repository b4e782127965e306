/*
 * branchtrace Stalker agent: the hooked functions a forked child puts back as they were
 * (forkchild.c, docs/stalker.md "fork").
 */

const UNHOOK_MAX = 64, UNHOOK_SIZE = 24;   // BT_UNHOOK_MAX, sizeof (BtUnhook)
const O_RDONLY = 0;
/* Functions hooked in the program: by Frida before us (its exit monitor; its exceptor's
 * replacements of signal and sigaction) and by us (agent.js, crash.js, ours.js). */
const HOOKED_NAMES = ['exit', '_exit', 'abort', 'signal', 'sigaction', '__call_tls_dtors',
  'fork', 'vfork', 'clone', 'posix_spawn', 'posix_spawnp', 'execve', 'execv', 'execvp',
  'execvpe', 'execl', 'execlp', 'execle', 'fexecve', 'execveat', 'dlopen', 'dlmopen'];
const unhooks = Memory.alloc(UNHOOK_MAX * UNHOOK_SIZE);
const unhooksN = Memory.alloc(4);
const unhooked = new Set();

/* The CModule's symbols for the table. */
function unhookSymbols() {
  return { bt_unhooks: unhooks, bt_unhooks_n: unhooksN };
}

/* Every function of HOOKED_NAMES a hook has patched, and `more` (the trigger's). */
function noteHookedFunctions(more) {
  for (const name of HOOKED_NAMES) {
    const address = Module.findGlobalExportByName(name);
    if (address !== null)
      noteHooked(address);
  }
  for (const address of more)
    noteHooked(address);
}

/* Note a function a hook patched (it starts with a jump: e9 rel32, or ff 25 for one that
 * is far) with its first 16 bytes as its file has them; a file whose bytes are the same
 * (no hook there), or that cannot be read, adds nothing. */
function noteHooked(address) {
  const key = address.toString();
  const n = unhooksN.readU32();
  if (unhooked.has(key) || n >= UNHOOK_MAX)
    return;
  const range = Process.findRangeByAddress(address);
  if (range === null || range.file === undefined)
    return;
  const now = new Uint8Array(address.readByteArray(16));
  if (now[0] !== 0xe9 && !(now[0] === 0xff && now[1] === 0x25))
    return;
  const offset = range.file.offset + address.sub(range.base).toUInt32();
  const original = fileBytes(range.file.path, offset, 16);
  if (original === null || original.every((b, i) => b === now[i]))
    return;
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
