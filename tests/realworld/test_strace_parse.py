"""The native process count the corpus compares against: strace's per-thread files,
written here by hand, give the processes (threads are not processes), their parents,
argv[0] after the last exec, and how each ended."""

from __future__ import annotations

from pathlib import Path

from .harness import NativeProcess, parse_strace

FILES = {
    # tar: a worker thread, then a child that runs sh -c gzip, which vforks gzip
    100: ['execve("/usr/bin/tar", ["tar", "-czf", "-", "a"], 0x7ffe /* 3 vars */) = 0',
          "clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|"
          "CLONE_SYSVSEM, child_tid=0x7f, exit_signal=0, stack=0x7f, stack_size=0x7ff540}"
          " => {parent_tid=[101]}, 88) = 101",
          "clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD,"
          " child_tidptr=0x7f6) = 102",
          "+++ exited with 2 +++"],
    101: ["+++ exited with 0 +++"],
    102: ['execve("/bin/sh", ["/bin/sh", "-c", "gzip"], 0x55 /* 3 vars */) = 0',
          "vfork()                                 = 103",
          "+++ exited with 0 +++"],
    103: ['execve("/root/bin/gzip", ["gzip"], 0x55 /* 3 vars */) = -1 ENOENT (No such file'
          ' or directory)',
          'execve("/usr/bin/gzip", ["gzip", "-\\"q\\""], 0x55 /* 3 vars */) = 0',
          "+++ killed by SIGPIPE +++"],
    # a thread of the worker's process forks a child that never execs
    104: ["+++ exited with 0 +++"],
}


def test_processes_from_strace_files(tmp_path: Path) -> None:
    files = dict(FILES)
    files[101] = ["fork()                                  = 104", *FILES[101]]
    for tid, lines in files.items():
        (tmp_path / f"p.{tid}").write_text("\n".join(lines) + "\n")
    assert parse_strace(tmp_path, "tar") == [
        NativeProcess(100, 0, "tar", "exited 2", 1),
        NativeProcess(102, 100, "/bin/sh", "exited 0", 1),
        NativeProcess(104, 100, "tar", "exited 0", 0),
        NativeProcess(103, 102, "gzip", "killed SIGPIPE", 1),
    ]
