"""Stores and trace files cannot be read, planted or redirected by another user, and
reading a trace file never executes anything from it (docs/security.md)."""

from __future__ import annotations

import ast
import dataclasses
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ALL_BACKENDS, cli

import branchtrace
from branchtrace.cli import main as cli_main
from branchtrace.errors import StoreError, UsageError
from branchtrace.store import Encoding, Store, StoreConfig, StoreMode
from branchtrace.store import files as store_files
from branchtrace.store.blocks import create_table
from branchtrace.tracefile import TraceWriter, save
from branchtrace.tracefile.format import FileHeader

SRC = Path(branchtrace.__file__).parent
ROOT = os.geteuid() == 0
NOBODY = 65534
CONFIG = StoreConfig(StoreMode.STREAM, Encoding.BLOCKID, 1024, 256)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- stores ---------------------------------------------------------------------------------

def test_store_is_0600_in_a_fresh_0700_directory():
    a, b = Store.create(CONFIG), Store.create(CONFIG)
    try:
        for store in (a, b):
            assert mode(store.path) == 0o600 and mode(store.path.parent) == 0o700
            assert os.lstat(store.path.parent).st_uid == os.geteuid()
            table = create_table(store.path.parent, store.path.stem, 64)
            assert mode(table) == 0o600
        # nothing to predict: another directory and another file name every time
        assert a.path.parent != b.path.parent and a.path.name != b.path.name
        assert a.path.parent.name.startswith("branchtrace-") and len(a.path.parent.name) > 16
    finally:
        a.close()
        b.close()
    assert not a.path.parent.exists() and not b.path.parent.exists()


def test_a_planted_symlink_at_the_store_path_is_not_followed(tmp_path, monkeypatch):
    """Were the name guessed, a link planted there makes creation fail; its target is
    not touched (O_CREAT|O_EXCL|O_NOFOLLOW)."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(store_files.secrets, "token_hex", lambda n: "guessed")
    (private / "btstore-guessed.bts").symlink_to(victim)
    with pytest.raises(FileExistsError):
        Store.create(CONFIG, private)
    assert victim.read_bytes() == b"precious"
    (private / "stem.blocks").symlink_to(victim)
    with pytest.raises(FileExistsError):
        create_table(private, "stem", 64)
    assert victim.read_bytes() == b"precious"


@pytest.mark.parametrize("dir_mode", [0o777, 0o1777, 0o770, 0o722])
def test_a_directory_others_can_write_is_refused(tmp_path, dir_mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(dir_mode)
    with pytest.raises(StoreError, match="others may write"):
        Store.create(CONFIG, shared)
    assert list(shared.iterdir()) == []


def test_a_symlinked_or_missing_directory_is_refused(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(StoreError, match="symbolic link"):
        Store.create(CONFIG, tmp_path / "link")
    with pytest.raises(StoreError, match="No such file"):
        Store.create(CONFIG, tmp_path / "missing")
    assert list(real.iterdir()) == []


@pytest.mark.skipif(not ROOT, reason="needs root to give a directory to another user")
def test_a_directory_of_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(StoreError, match=f"belongs to uid {NOBODY}"):
        Store.create(CONFIG, theirs)
    assert list(theirs.iterdir()) == []


def test_a_private_directory_of_ours_is_used(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir(mode=0o700)
    with Store.create(CONFIG, ours) as store:
        assert store.path.parent == ours and mode(store.path) == 0o600
    assert list(ours.iterdir()) == []


LIST_STORES = r"""
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
static void show(const char *path) {
    struct stat st;
    if (lstat(path, &st) == 0)
        printf("%o %u %s %s\n", st.st_mode & 07777, st.st_uid, S_ISDIR(st.st_mode) ? "dir" : "file", path);
}
__attribute__((noinline)) int done(void) { return 0; }
int main(int argc, char **argv) {
    DIR *top = opendir(argv[1]);
    struct dirent *d, *e;
    char dir[4096], file[8192];
    while (top && (d = readdir(top)))
        if (strncmp(d->d_name, "branchtrace-", 12) == 0) {
            snprintf(dir, sizeof dir, "%s/%s", argv[1], d->d_name);
            show(dir);
            DIR *in = opendir(dir);
            while (in && (e = readdir(in)))
                if (e->d_name[0] != '.') {
                    snprintf(file, sizeof file, "%s/%s", dir, e->d_name);
                    show(file);
                }
            if (in) closedir(in);
        }
    return done();
}
"""


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_store_files_during_a_run(backend, tmp_path):
    """What exists while a program is recorded: the program lists the store directories
    (every branchtrace-* directory in /dev/shm or the temporary directory is some run's;
    ptrace records only from done(), so the listing runs at full speed)."""
    (tmp_path / "ls.c").write_text(LIST_STORES)
    exe = tmp_path / "ls_stores"
    subprocess.run(["gcc", "-O0", "-o", str(exe), str(tmp_path / "ls.c")], check=True)
    result = cli("run", "--backend", backend, "--start", "done", "--", str(exe),
                 store_files._default_parent())
    assert result.returncode == 0, result.stderr
    rows = [line.split(" ", 3) for line in result.stdout.splitlines() if line.strip()]
    mine = [r for r in rows if r[1] == str(os.geteuid())]
    assert any(r[2] == "dir" for r in mine) and any(r[2] == "file" for r in mine), rows
    for perm, _uid, kind, name in mine:
        assert perm == ("700" if kind == "dir" else "600"), (perm, kind, name)


# -- trace files (-o) -----------------------------------------------------------------------

HEADER = FileHeader(1, 1, 24, 16, 0, 0, 0, "ptrace", "test", ("prog",))


def test_new_trace_file_is_0600_whatever_the_umask(build, tmp_path):
    out = tmp_path / "t.btrace"
    result = subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh", *_cli_argv(
        "run", "--backend", "ptrace", "-o", str(out), "--", str(build("loop")), "3")],
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert mode(out) == 0o600
    assert branchtrace.open(out).exit.status == "exited"


def test_an_existing_file_of_ours_is_overwritten_and_made_0600(tmp_path):
    out = tmp_path / "t.btrace"
    out.write_bytes(b"old contents " * 1000)
    out.chmod(0o644)
    TraceWriter.create(out, HEADER).close()
    assert mode(out) == 0o600 and b"old contents" not in out.read_bytes()


def _shared(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)      # like /tmp
    return shared


def test_a_planted_symlink_is_not_followed(tmp_path):
    shared = _shared(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (shared / "t.btrace").symlink_to(victim)
    with pytest.raises(UsageError, match="symbolic link"):
        TraceWriter.create(shared / "t.btrace", HEADER)
    dangling = shared / "d.btrace"
    dangling.symlink_to(tmp_path / "would-be-created")
    with pytest.raises(UsageError, match="symbolic link"):
        TraceWriter.create(dangling, HEADER)
    assert victim.read_bytes() == b"precious" and not (tmp_path / "would-be-created").exists()


def test_a_hard_link_is_not_overwritten(tmp_path):
    shared = _shared(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.link(victim, shared / "t.btrace")
    with pytest.raises(UsageError, match="hard links"):
        TraceWriter.create(shared / "t.btrace", HEADER)
    assert victim.read_bytes() == b"precious"


@pytest.mark.skipif(not ROOT, reason="needs root to make a file of another user")
def test_a_file_of_another_user_is_not_overwritten(tmp_path):
    shared = _shared(tmp_path)
    theirs = shared / "t.btrace"
    theirs.write_bytes(b"theirs")
    theirs.chmod(0o666)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(UsageError, match=f"belongs to uid {NOBODY}"):
        TraceWriter.create(theirs, HEADER)
    assert theirs.read_bytes() == b"theirs" and os.stat(theirs).st_uid == NOBODY


def test_the_cli_refuses_a_planted_symlink_before_running(build, tmp_path, capfd):
    shared = _shared(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (shared / "t.btrace").symlink_to(victim)
    marker = tmp_path / "ran"
    code = cli_main(["run", "-o", str(shared / "t.btrace"), "--", "/bin/sh", "-c",
                     f"touch {marker}"])
    err = capfd.readouterr().err
    assert code != 0 and "symbolic link" in err and len(err.strip().splitlines()) == 1
    assert victim.read_bytes() == b"precious" and not marker.exists()


# -- reading never executes -----------------------------------------------------------------

READING = ["tracefile", "store", "symbols", "decode", "trace.py"]
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill",
                     "cloudpickle", "joblib", "subprocess", "pty", "ctypes", "yaml"}
#: The one exception, and why: symbols/demangle.py calls libstdc++'s __cxa_demangle (the
#: demangler c++filt, GDB and perf use on any binary) through ctypes. It loads that one
#: library by a fixed name and calls that one function on a name string (names longer
#: than MAX_MANGLED are not demangled): nothing a trace says is loaded or run.
ALLOWED = {("demangle.py", "ctypes")}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_METHODS = {"system", "popen", "execv", "execve", "execvp", "execvpe", "execl",
                     "execlp", "spawnv", "spawnve", "spawnl", "posix_spawn", "import_module",
                     "run_path", "run_module"}


def _sources() -> list[Path]:
    paths: list[Path] = []
    for name in READING:
        p = SRC / name
        paths += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return paths


def test_the_readers_can_execute_nothing():
    """No pickle, marshal, shelve, eval, exec (or any way to run a program) in the code
    that reads trace files and stores; numpy never loads with allow_pickle."""
    sources = _sources()
    assert len(sources) > 15
    found = []
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            elif isinstance(node, ast.Call):
                f = node.func
                names = []
                if (isinstance(f, ast.Name) and f.id in FORBIDDEN_BUILTINS) or (
                        isinstance(f, ast.Attribute) and f.attr in FORBIDDEN_METHODS):
                    found.append(f"{path.name}:{node.lineno}: calls {ast.unparse(f)}")
                for kw in node.keywords:
                    if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant)
                                                         and kw.value.value is False):
                        found.append(f"{path.name}:{node.lineno}: allow_pickle")
            else:
                continue
            found += [f"{path.name}:{node.lineno}: imports {n}" for n in names
                      if n in FORBIDDEN_MODULES and (path.name, n) not in ALLOWED]
    assert found == []


def test_a_hostile_trace_runs_nothing(build, tmp_path, capfd, monkeypatch):
    """Shell syntax in the argv and module paths of a trace is only ever printed."""
    marker = tmp_path / "pwned"
    evil = f"$(touch {marker}); `touch {marker}`; touch {marker}"
    out = tmp_path / "real.btrace"
    assert cli("run", "--backend", "ptrace", "-o", str(out), "--", str(build("loop")),
               "3").returncode == 0
    trace = branchtrace.open(out)
    trace = dataclasses.replace(
        trace, argv=(evil, evil),
        modules=[dataclasses.replace(m, path=evil) for m in trace.modules])
    hostile = tmp_path / "hostile.btrace"
    save(trace, hostile)
    monkeypatch.chdir(tmp_path)
    for args in (["crash"], ["stats"], ["history", "--insns", "--source"],
                 ["history", "--calls", "--lines"], ["profile", "--format", "perfetto"],
                 ["coverage", "--format", "lcov", "-o", "-"]):
        code = cli_main([args[0], str(hostile), *args[1:]])
        capfd.readouterr()
        assert code == 0
    assert not marker.exists()


def test_files_named_by_a_trace_that_are_fifos_or_devices_are_not_read(build, tmp_path):
    """A trace names the binaries to read, and their DWARF the sources: a FIFO or a device
    there must not make a reader wait for a writer or read without end."""
    source = tmp_path / "prog.c"
    source.write_text((Path(__file__).parents[1] / "fixtures" / "loop.c").read_text())
    exe = tmp_path / "prog"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(source)], check=True)
    real = tmp_path / "real.btrace"
    assert cli("run", "--backend", "ptrace", "-o", str(real), "--", str(exe), "3").returncode == 0
    source.unlink()
    os.mkfifo(source)                       # the source file DWARF names is now a FIFO
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    files = [real]
    for i, path in enumerate((str(fifo), "/dev/zero")):
        trace = branchtrace.open(real)
        hostile = tmp_path / f"hostile{i}.btrace"
        save(dataclasses.replace(trace, modules=[dataclasses.replace(m, path=path)
                                                 for m in trace.modules]), hostile)
        files.append(hostile)
    for file in files:          # symbols, instructions and sources: all read from files
        result = cli("history", str(file), "--insns", "--source", timeout=60)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr


def _cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "branchtrace", *args]
