/*
 * branchtrace Stalker agent, part 6: Frida's byte-at-a-time memset (issue 15,
 * docs/benchmarks.md). Frida's agent carries its own memset, a loop that stores one byte
 * per iteration; capstone calls it whenever Stalker opens a fresh capstone handle, which
 * it does for every jump it backpatches (gum_exec_block_get_eob ->
 * gum_x86_reader_disassemble_instruction_at). On big code footprints that loop was the
 * hottest code of the whole run: 23% of cc1's samples, 27% of python3's, under ring mode.
 *
 * The loop is found by its exact bytes, which say all it does:
 *     mov rax, rdi; xor ecx, ecx; l: cmp rcx, rdx; je r; mov [rax+rcx], sil; inc rcx;
 *     jmp l; r: ret
 * i.e. memset (rdi, sil, rdx), returning rdi, clobbering rcx and the flags only. It is
 * rewritten in place to `rep stosb`, which does the same and clobbers nothing more
 * (rdi is saved; rcx ends 0 instead of n: a caller that assumed only rax and rcx change,
 * as interprocedural register allocation may, still holds). Nothing is patched when the
 * bytes are not there exactly once (another Frida build): the run is only slower.
 * Done at init, before any thread of the program is followed.
 */

const BYTE_FILL = '48 89 f8 31 c9 48 39 d1 74 09 40 88 34 08 48 ff c1 eb f2 c3';
const REP_STOSB_FILL = [
  0x57,                   // push rdi
  0x89, 0xf0,             // mov eax, esi
  0x48, 0x89, 0xd1,       // mov rcx, rdx
  0xf3, 0xaa,             // rep stosb
  0x5f,                   // pop rdi
  0x48, 0x89, 0xf8,       // mov rax, rdi
  0xc3,                   // ret
];

/* The executable ranges of Frida's agent (cloaked from enumerateModules), each with the
 * file offset it maps. */
function fridaAgentCode() {
  const text = File.readAllText('/proc/self/maps');
  const ranges = [];
  for (const line of text.split('\n')) {
    const f = line.split(/\s+/);
    if (f.length < 6 || f[1].indexOf('x') < 0 || line.indexOf('frida-agent') < 0)
      continue;
    const [lo, hi] = f[0].split('-');
    ranges.push({ base: ptr('0x' + lo), size: parseInt(hi, 16) - parseInt(lo, 16),
                  fileOffset: parseInt(f[2], 16) });
  }
  return ranges;
}

/* The code at ``offset`` of the agent's file as { at, offset }, if its bytes there are
 * ``bytes`` (-1: any byte), else null. */
function bytesAt(ranges, offset, bytes) {
  for (const r of ranges) {
    if (offset < r.fileOffset || offset + bytes.length > r.fileOffset + r.size)
      continue;
    const at = r.base.add(offset - r.fileOffset);
    const have = new Uint8Array(at.readByteArray(bytes.length));
    return bytes.every((b, i) => b < 0 || have[i] === b) ? { at, offset } : null;
  }
  return null;
}

/* Where ``bytes`` are in the agent's code ({ at, offset }), found with libc's memmem
 * (~10-40 ms for its 22 MB; Memory.scanSync took ~0.3 s), if they are there exactly
 * once; else null. */
function findUnique(ranges, bytes) {
  const memmem = new NativeFunction(Module.getGlobalExportByName('memmem'), 'pointer',
                                    ['pointer', 'size_t', 'pointer', 'size_t']);
  const needle = Memory.alloc(bytes.length);
  needle.writeByteArray(bytes);
  const found = [];
  for (const r of ranges) {
    let at = r.base;
    const end = r.base.add(r.size);
    while (found.length < 2) {
      const hit = memmem(at, end.sub(at).toUInt32(), needle, bytes.length);
      if (hit.isNull())
        break;
      found.push({ at: hit, offset: r.fileOffset + hit.sub(r.base).toUInt32() });
      at = hit.add(1);
    }
  }
  return found.length === 1 ? found[0] : null;
}

/* Where the loop is ({ at, offset } or null): at ``offset`` when given (the tracer keeps
 * it from the last run of the same Frida) and still right, else searched for. */
function findByteFill(offset) {
  const bytes = BYTE_FILL.split(' ').map(h => parseInt(h, 16));
  const ranges = fridaAgentCode();
  if (offset !== null && offset !== undefined) {
    const known = bytesAt(ranges, offset, bytes);
    if (known !== null)
      return known;
  }
  return findUnique(ranges, bytes);
}

/* Rewrite the loop (the header above); returns its offset in the agent's file, or null
 * when it was not found. */
function fastFill(offset) {
  let found = null;
  try {
    found = findByteFill(offset);
  } catch (e) {
    return null;
  }
  if (found === null)
    return null;
  Memory.patchCode(found.at, REP_STOSB_FILL.length, code => {
    code.writeByteArray(REP_STOSB_FILL);
  });
  return found.offset;
}
