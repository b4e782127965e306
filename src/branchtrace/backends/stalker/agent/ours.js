/*
 * branchtrace Stalker agent, part 5 of 6: what we inject is never part of the program's
 * trace (docs/stalker.md, "Our own libraries"). Frida's agent is cloaked (bt_is_tool);
 * the libraries it made ld.so load (libpthread, libm, librt, libdl: its DT_NEEDED,
 * mapped by the injection and not before) are ordinary modules to Gum, so their code,
 * run by the program's threads (their destructors at exit), was recorded. The tracer
 * names them (params.ours: mapped after the attach and not before); their code counts
 * as Frida's until the program itself dlopens one of them (then it is the program's:
 * the tracer is told, and adds it to the module map).
 */

let oursRanges = null;   // [{ path, name, lo, hi }], index i at cfg.ours + 16 i

function excludeOurModules(paths) {
  const wanted = new Set(paths);
  oursRanges = Process.enumerateModules()
      .filter(m => wanted.has(m.path))
      .map(m => ({ path: m.path, name: m.name, lo: m.base, hi: m.base.add(m.size) }));
  const buf = Memory.alloc(Math.max(16, 16 * oursRanges.length));
  keep.push(buf);
  oursRanges.forEach((r, i) => {
    buf.add(16 * i).writePointer(r.lo);
    buf.add(16 * i + 8).writePointer(r.hi);
  });
  cfg.add(CFG.ours).writePointer(buf);
  cfg.add(CFG.nours).writeU32(oursRanges.length);
  if (oursRanges.length > 0)
    watchProgramDlopen();
}

/* The program's own dlopen of one of them (by its name or path) makes it the program's:
 * its blocks are recorded from then on and it is in the module map. A library it opens
 * that merely needs one of them (DT_NEEDED) does not: that one stays ours. */
function watchProgramDlopen() {
  for (const name of ['dlopen', 'dlmopen']) {
    const address = Module.findGlobalExportByName(name);
    if (address === null)
      continue;
    const pathArg = name === 'dlopen' ? 0 : 1;
    hook(address, {
      onEnter(args) {
        this.path = null;
        if (stopping || Cloak.hasCurrentThread() || inChild())
          return;
        const p = args[pathArg];
        this.path = p.isNull() ? null : p.readCString();
      },
      onLeave(retval) {
        if (this.path === null || retval.isNull() || stopping)
          return;
        const asked = this.path;
        const base = asked.substring(asked.lastIndexOf('/') + 1);
        oursRanges.forEach((r, i) => {
          if (r.lo.isNull() || (r.path !== asked && r.name !== base))
            return;
          const at = cfg.add(CFG.ours).readPointer().add(16 * i);
          at.writePointer(NULL);            // [0, 0): the program's from now on
          at.add(8).writePointer(NULL);
          r.lo = NULL;
          send({ type: 'claim', path: r.path });
        });
      },
    });
  }
}
