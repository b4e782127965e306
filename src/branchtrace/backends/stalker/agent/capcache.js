/*
 * branchtrace Stalker agent, part 7: capstone's per-handle tables, copied instead of
 * rebuilt (issue 15, docs/benchmarks.md). Stalker opens a fresh capstone handle for every
 * jump it backpatches (gum_exec_block_get_eob -> gum_x86_reader_disassemble_instruction_at,
 * also inlined in gum_exec_block_backpatch_jmp), disassembles one instruction and closes
 * it. The first disassembly on a handle builds two lookup tables from capstone's static
 * instruction maps (the function below: an id -> index table, 0x7772 bytes set to 0xff
 * then filled by walking 15,143 entries of an 80-byte map, and a 0x3bb9 x 4-byte table
 * from three more maps), which cs_close frees again. On big code footprints that
 * function was the hottest code of the run after Frida's memset (fill.js): ~17% of cc1's
 * samples under ring mode.
 *
 * The tables depend on nothing but capstone's static maps, so the agent builds them once
 * (by calling the function itself on a zeroed stand-in handle) and replaces the function
 * with one that gives each handle a copy: allocated through capstone's own cs_mem_malloc
 * and cs_mem_calloc pointers (cs_close frees them as before), filled with libc's memcpy. Same
 * fields, same contents, same allocator. The function is recognised by its whole body
 * (every byte but the displacements of its seven rip-relative leas): another Frida build
 * is left as it is (only slower). Done at init, before any thread is followed.
 */

/* The function, with its rip-relative displacements as -1 (any byte). */
const TABLES_FN = [
  '48 83 bf 80 00 00 00 00', '0f 85 8c 01 00 00', '48 8d 05 -- -- -- --',
  '53', '48 89 fb', 'c7 87 90 00 00 00 b8 3b 00 00', 'bf 72 77 00 00', 'ff 10',
  '48 89 83 80 00 00 00', '48 89 c2', '48 85 c0', '0f 84 5b 01 00 00', 'b0 ff', '48 89 d7',
  'b9 72 77 00 00', '48 8d 15 -- -- -- --', 'f3 aa', '31 c0', '48 8b 8b 80 00 00 00',
  '0f b7 32', '48 83 c2 50', '66 89 04 71', 'ff c0', '3d 27 3b 00 00', '75 ec',
  '48 8d 05 -- -- -- --', 'be 04 00 00 00', 'bf b9 3b 00 00', 'ff 10', '48 89 83 88 00 00 00',
  '48 89 c2', '48 85 c0', '0f 84 05 01 00 00', '48 8d 05 -- -- -- --', '4c 8d 80 14 04 00 00',
  '8b 08', '66 81 f9 b8 3b', '77 17', '8b 78 04', '0f b7 f1', '8b 48 08', '66 81 e7 ff 0f',
  'c1 e1 0c', '09 f9', '66 89 0c b2', '48 83 c0 0c', '4c 39 c0', '75 d7',
  '48 8d 0d -- -- -- --', '4c 8d 89 d8 00 00 00', '0f b7 01', '8d 70 ff', '66 81 fe b7 3b',
  '77 27', '4c 8d 04 82', '41 8b 30', '66 85 f6', '75 1b', '8b 41 08', '8b 79 04',
  '66 31 f6', 'c1 e0 0c', '66 81 e7 ff 0f', '09 f8', '0f b7 c0', '09 f0', '41 89 00',
  '48 83 c1 0c', '4c 39 c9', '75 c3', '48 8d 05 -- -- -- --', '4c 8d 80 38 04 00 00',
  '8b 08', '66 81 f9 b8 3b', '77 18', '8b 78 04', '0f b7 f1', '8b 48 08', '66 81 e7 ff 0f',
  'c1 e1 0c', '09 f9', '66 89 4c b2 02', '48 83 c0 0c', '4c 39 c0', '75 d6',
  '48 8d 0d -- -- -- --', '4c 8d 89 b4 00 00 00', '0f b7 01', '8d 70 ff', '66 81 fe b7 3b',
  '77 27', '48 8d 3c 82', '44 8b 07', '44 89 c0', 'c1 e8 10', '75 18', '8b 41 08', '8b 71 04',
  'c1 e0 0c', '66 81 e6 ff 0f', '09 f0', 'c1 e0 10', '44 09 c0', '89 07', '48 83 c1 0c',
  '49 39 c9', '75 c3', '5b', 'c3', 'c3',
].join(' ').split(' ').map(h => h === '--' ? -1 : parseInt(h, 16));

/* Where the pointers to capstone's cs_mem_malloc and cs_mem_calloc are read: the
 * displacements of the leas before the two `call *(%rax)` (at +0x0e and +0x6d). */
const MALLOC_LEA = 0x0e;
const CALLOC_LEA = 0x6d;

/* A needle without displacements, found with memmem, then the whole body compared. */
const NEEDLE_AT = 0x19;   // movl $0x3bb8, 0x90(%rdi); mov $0x7772, %edi; call *(%rax); ...
const NEEDLE_LEN = 24;

const TABLES_C = `
typedef unsigned long bt_size;
typedef void *(*bt_malloc_fn) (bt_size n);
typedef void *(*bt_calloc_fn) (bt_size n, bt_size size);

extern bt_malloc_fn bt_cs_malloc;    /* capstone's cs_mem_malloc and cs_mem_calloc */
extern bt_calloc_fn bt_cs_calloc;
extern void *bt_tables[2];            /* the tables, built once */
extern void *memcpy (void *to, const void *from, bt_size n);   /* libc's */

void
bt_cs_tables (char *handle)
{
  void *ids, *regs;

  if (*(void **) (handle + 0x80) != 0)
    return;
  *(unsigned int *) (handle + 0x90) = 0x3bb8;
  ids = bt_cs_malloc (0x7772);
  *(void **) (handle + 0x80) = ids;
  if (ids == 0)
    return;
  memcpy (ids, bt_tables[0], 0x7772);
  regs = bt_cs_calloc (0x3bb9, 4);
  *(void **) (handle + 0x88) = regs;
  if (regs == 0)
    return;
  memcpy (regs, bt_tables[1], 0x3bb9 * 4);
}
`;

/* Where the function is ({ at, offset } or null): at ``offset`` when given and still
 * right, else searched for by a needle without displacements and its whole body. */
function findTablesFn(offset) {
  const ranges = fridaAgentCode();   // fill.js
  if (offset !== null && offset !== undefined) {
    const known = bytesAt(ranges, offset, TABLES_FN);
    if (known !== null)
      return known;
  }
  const found = findUnique(ranges, TABLES_FN.slice(NEEDLE_AT, NEEDLE_AT + NEEDLE_LEN));
  if (found === null)
    return null;
  return bytesAt(ranges, found.offset - NEEDLE_AT, TABLES_FN);
}

/* The rip-relative lea at ``at`` + ``lea``: the address it loads. */
function leaTarget(at, lea) {
  return at.add(lea + 7).add(at.add(lea + 3).readS32());
}

/* Replace the function (the header above); returns its offset in the agent's file, or
 * null when it was not found or its tables could not be built. */
function copyCapstoneTables(offset) {
  let found = null;
  try {
    found = findTablesFn(offset);
  } catch (e) {
    return null;
  }
  if (found === null)
    return null;
  const stand = Memory.alloc(0x100);   // a zeroed stand-in handle: only 0x80-0x97 are used
  new NativeFunction(found.at, 'void', ['pointer'])(stand);
  const ids = stand.add(0x80).readPointer();
  const regs = stand.add(0x88).readPointer();
  if (ids.isNull() || regs.isNull() || stand.add(0x90).readU32() !== 0x3bb8)
    return null;
  const tables = Memory.alloc(2 * Process.pointerSize);
  tables.writePointer(ids);
  tables.add(Process.pointerSize).writePointer(regs);
  const cm = new CModule(TABLES_C, {
    bt_cs_malloc: leaTarget(found.at, MALLOC_LEA),
    bt_cs_calloc: leaTarget(found.at, CALLOC_LEA),
    bt_tables: tables,
    memcpy: Module.getGlobalExportByName('memcpy'),   // TinyCC's own loop took ~5x longer
  });
  keep.push(stand, tables, cm);
  Memory.patchCode(found.at, 12, code => {
    const w = new X86Writer(code, { pc: found.at });
    w.putMovRegAddress('rax', cm.bt_cs_tables);   // movabs rax, ...; jmp rax
    w.putJmpReg('rax');
    w.flush();
  });
  return found.offset;
}
