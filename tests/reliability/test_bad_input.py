"""Every command fed wrong arguments: one clear line on stderr, a non-zero exit, never a
traceback, and no program started or left stopped.

The table is commands x bad inputs. Cases that fail before any backend runs are run in
this process (``branchtrace.cli.main``, with argparse's exit caught): fast, so the table
can be complete. Cases that reach a backend or a live process run ``python -m
branchtrace`` in a child. tests/integration/test_cli_errors.py has the older cases
(sizes over the memory limit, unknown backend, --start, a pid traced by another
tracer, ourselves); they are not repeated here.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import cli

from branchtrace.cli import DEBUG_ENV
from branchtrace.cli import main as cli_main
from branchtrace.tracefile.format import PREAMBLE, VERSION

FILE_COMMANDS = {          # command: the arguments it needs besides FILE
    "crash": [], "history": [], "stats": [],
    "profile": ["--format", "perfetto"],
    "coverage": ["--format", "json", "-o", "-"],
}
RECORD_COMMANDS = ("run", "attach", "demo")


@dataclass
class Env:
    trace: Path          # a real trace file
    tid: int             # its only thread
    bad: dict[str, Path]
    root: Path
    target: subprocess.Popen[bytes]   # a live process for attach (never really attached)
    exe_dir: Path


@pytest.fixture(scope="module")
def env(build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    yield from make_env(build, tmp_path_factory)


def make_env(build, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A real trace, bad files of every kind, and a live process to name to attach."""
    root = tmp_path_factory.mktemp("badinput")
    trace = root / "loop.btrace"
    result = cli("run", "--backend", "ptrace", "-o", str(trace), "--", str(build("loop")), "3")
    assert result.returncode == 0, result.stderr
    data = trace.read_bytes()
    magic, version, reserved = PREAMBLE.unpack_from(data)
    assert version == VERSION
    bad = {"missing": root / "no-such.btrace", "directory": root / "adir",
           "empty": root / "empty.btrace", "text": root / "text.btrace",
           "newer": root / "newer.btrace", "cut": root / "cut.btrace", "fifo": root / "fifo"}
    bad["directory"].mkdir()
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not a trace\n" * 20)
    bad["newer"].write_bytes(PREAMBLE.pack(magic, VERSION + 1, reserved) + data[PREAMBLE.size:])
    bad["cut"].write_bytes(data[:10])
    os.mkfifo(bad["fifo"])
    (root / "notexec").write_text("#!/bin/sh\n")
    target = subprocess.Popen([str(build("sleeper")), str(root / "finished"), "600"])
    from branchtrace import open as open_trace

    tid = next(iter(open_trace(trace).threads))
    yield Env(trace, tid, bad, root, target, root)
    target.kill()
    target.wait()


def _state(pid: int) -> tuple[str, int]:
    """(State letter, TracerPid) of ``pid``."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return fields["State"].split()[0], int(fields["TracerPid"])


def in_process(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = cli_main(args)
    except SystemExit as exc:    # argparse
        code = exc.code if isinstance(exc.code, int) else 1
    return code, capfd.readouterr().err


def assert_one_line(code: int, err: str, words: str) -> str:
    assert code != 0 and words.strip(), "every case names the words it expects"
    assert "Traceback" not in err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].strip(), repr(err)
    assert lines[0].startswith("branchtrace"), lines[0]
    assert words.lower() in lines[0].lower(), f"{words!r} not in {lines[0]!r}"
    return lines[0]


# -- the commands that read a trace file ---------------------------------------------------

BAD_FILES = {"missing": "no such file", "directory": "directory", "empty": "empty",
             "text": "not a branchtrace trace", "newer": "newer",
             "cut": "truncated header: the file has only 10 bytes",
             "fifo": "not a regular file"}


def _file_args(command: str, file: str, *extra: str) -> list[str]:
    return [command, file, *FILE_COMMANDS[command], *extra]


@pytest.mark.parametrize("command", FILE_COMMANDS)
@pytest.mark.parametrize("which", BAD_FILES)
def test_file_commands_refuse_bad_files(env, capfd, command, which):
    code, err = in_process(_file_args(command, str(env.bad[which])), capfd)
    assert_one_line(code, err, BAD_FILES[which])


# (extra arguments, words in the error); {tid} and {root} are filled in
FILE_OPTIONS = [
    (["--frobnicate"], "unrecognized arguments"),
    (["--thread", "0"], "'0'"),
    (["--thread", "-1"], "-1"),
    (["--thread", "abc"], "'abc'"),
    (["--thread", "{badtid}"], "{badtid}"),
    (["--pid", "0"], "'0'"),
    (["--pid", "abc"], "'abc'"),
    (["--pid", "{badtid}"], "no process {badtid} in this trace"),
    (["-o", "{root}/missing-dir/out"], "no such directory"),
    (["-o", "{root}/adir"], "directory"),
    (["-o", "/proc/version"], "/proc/version"),
    (["-o", "{trace}"], "is the trace file being read"),
    (["--last", "-1"], "-1"),
    (["--last", "0"], "'0'"),
    (["--top", "0"], "'0'"),
    (["--format", "nosuch"], "nosuch"),
]
#: options a command does not have: argparse says so in one line
NOT_AN_OPTION = {"coverage": {"--thread", "--last", "--top"}, "profile": {"--last", "--top"},
                 "stats": {"--last"}, "crash": {"--top"}, "history": {"--top", "--format"}}


@pytest.mark.parametrize("command", FILE_COMMANDS)
@pytest.mark.parametrize("extra, words", FILE_OPTIONS, ids=lambda v: str(v))
def test_file_commands_refuse_bad_options(env, capfd, command, extra, words):
    fill = {"root": str(env.root), "badtid": str(env.tid + 1), "trace": str(env.trace)}
    extra = [e.format(**fill) for e in extra]
    if extra[0] in NOT_AN_OPTION.get(command, ()):
        words = "unrecognized arguments"
    args = [command, str(env.trace), *extra]
    if command == "coverage" and extra[0] == "-o":
        args += ["--format", "json"]
    elif extra[0] != "--format":
        args += FILE_COMMANDS[command]
    else:
        args += [a for a in FILE_COMMANDS[command] if a not in ("--format", "json", "perfetto")]
    before = env.trace.read_bytes()
    code, err = in_process(args, capfd)
    assert_one_line(code, err, words.format(**fill))
    assert not (env.root / "missing-dir").exists()
    assert env.trace.read_bytes() == before


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_file_commands_without_a_file(capfd, command):
    code, err = in_process([command], capfd)
    assert_one_line(code, err, "required")


# -- run, attach, demo: bad options fail before anything runs -------------------------------

RECORD_OPTIONS = [
    (["--buffer", "-5"], "-5"),
    (["--buffer", "0"], "'0'"),
    (["--buffer", "1000T"], "1000T"),
    (["--buffer", "abc"], "'abc'"),
    (["--memory-limit", "0"], "'0'"),
    (["--memory-limit", "-1"], "-1"),
    (["--memory-limit", "lots"], "lots"),
    (["--last", "-1"], "-1"),
    (["--last", "0"], "'0'"),
    (["--frobnicate"], "unrecognized arguments"),
    (["--mode", "circular"], "circular"),
    (["--format", "xml"], "xml"),
    (["--report", "sometimes"], "sometimes"),
    (["-o", "{root}/missing-dir/t.btrace"], "no such file or directory"),
    (["-o", "{root}/adir"], "directory"),
    (["-o", "{root}/link.btrace"], "symbolic link"),
    (["--report-to", "{root}/missing-dir/r.txt"], "no such directory"),
    (["--report-to", "{root}/adir"], "directory"),
]


def _record_args(env: Env, command: str, extra: list[str], marker: Path) -> list[str]:
    if command == "run":
        return ["run", *extra, "--", "/bin/sh", "-c", f"touch {marker}"]
    if command == "attach":
        return ["attach", str(env.target.pid), "--duration", "1", *extra]
    return ["demo", *extra]


@pytest.mark.parametrize("command", RECORD_COMMANDS)
@pytest.mark.parametrize("extra, words", RECORD_OPTIONS, ids=lambda v: str(v))
def test_record_commands_refuse_bad_options(env, capfd, tmp_path, command, extra, words):
    link = env.root / "link.btrace"
    if not link.is_symlink():
        link.symlink_to(env.root / "elsewhere.btrace")
    extra = [e.format(root=env.root) for e in extra]
    marker = tmp_path / "ran"
    code, err = in_process(_record_args(env, command, extra, marker), capfd)
    assert_one_line(code, err, words)
    assert not marker.exists(), "the program ran"
    assert not (env.root / "elsewhere.btrace").exists(), "followed a symbolic link"
    state, tracer = _state(env.target.pid)
    assert state not in "tT" and tracer == 0, "the target is left stopped or traced"


def test_run_never_writes_over_its_program_or_its_report(build, capfd, tmp_path):
    exe = tmp_path / "prog"
    exe.write_bytes(build("loop").read_bytes())
    exe.chmod(0o755)
    before = exe.read_bytes()
    for args, words in ((["-o", str(exe)], "is the program to run"),
                        (["-o", str(tmp_path / "x"), "--report-to", str(tmp_path / "x")],
                         "name the same file")):
        code, err = in_process(["run", "--backend", "ptrace", *args, "--", str(exe), "3"], capfd)
        assert_one_line(code, err, words)
    assert exe.read_bytes() == before and not (tmp_path / "x").exists()


ATTACH_ARGS = [
    (["0"], "'0'"),
    (["-1"], "-1"),
    (["abc"], "'abc'"),
    ([], "required"),
    (["{pid}", "--duration", "-3"], "-3"),
    (["{pid}", "--duration", "0"], "'0'"),
    (["{pid}", "--duration", "nan"], "nan"),
    (["{pid}", "--duration", "soon"], "soon"),
]


@pytest.mark.parametrize("args, words", ATTACH_ARGS, ids=lambda v: str(v))
def test_attach_refuses_bad_pids_and_durations(env, capfd, args, words):
    code, err = in_process(["attach", *[a.format(pid=env.target.pid) for a in args]], capfd)
    assert_one_line(code, err, words)
    assert _state(env.target.pid)[1] == 0


@pytest.mark.parametrize("args, words", [
    ([], "no program"),
    (["--"], "no program"),
], ids=str)
def test_run_without_a_program(capfd, args, words):
    code, err = in_process(["run", *args], capfd)
    assert_one_line(code, err, words)


@pytest.mark.parametrize("args", [["--frobnicate"], ["extra"]], ids=str)
def test_doctor_refuses_arguments(capfd, args):
    code, err = in_process(["doctor", *args], capfd)
    assert_one_line(code, err, "unrecognized arguments")


@pytest.mark.parametrize("args, words", [([], "required"), (["--frobnicate"], "required: COMMAND"),
                                         (["frobnicate"], "invalid choice")], ids=str)
def test_no_command(capfd, args, words):
    code, err = in_process(args, capfd)
    assert_one_line(code, err, words)


# -- errors no command turned into a message ------------------------------------------------

def test_a_bug_is_one_line_unless_debugging(env, capfd, monkeypatch):
    import branchtrace.cli.stats as stats_cmd

    def broken(args: object) -> int:
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(stats_cmd, "main", broken)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, err = in_process(["stats", str(env.trace)], capfd)
    line = assert_one_line(code, err, "internal error: RuntimeError: something broke")
    assert DEBUG_ENV in line and code == 70
    monkeypatch.setenv(DEBUG_ENV, "1")
    code, err = in_process(["stats", str(env.trace)], capfd)
    assert code == 70 and "Traceback" in err


def test_an_escaping_os_error_is_one_line(env, capfd, monkeypatch):
    import branchtrace.cli.stats as stats_cmd

    def broken(args: object) -> int:
        raise PermissionError(13, "Permission denied", "/some/file")

    monkeypatch.setattr(stats_cmd, "main", broken)
    code, err = in_process(["stats", str(env.trace)], capfd)
    assert_one_line(code, err, "/some/file: Permission denied")


def test_newer_version_field_is_what_the_reader_checks(env):
    """The patched file differs from the real one only in its version field."""
    real, newer = env.trace.read_bytes(), env.bad["newer"].read_bytes()
    diff = [i for i, (a, b) in enumerate(zip(real, newer)) if a != b]
    assert len(real) == len(newer) and diff and set(diff) <= {8, 9, 10, 11}
    assert struct.unpack_from("<I", newer, 8)[0] == VERSION + 1


@pytest.mark.parametrize("args, words", [
    (["history", "{trace}", "--insns", "--lines"], "--lines"),
    (["history", "{trace}", "--source"], "--source goes with --insns"),
    (["history", "{trace}", "--calls", "--insns"], "not allowed with"),
    (["coverage", "{trace}", "--format", "lcov", "-o", "-", "--test-name", "a b"], "--test-name"),
    (["coverage", "{trace}", "--format", "lcov"], "required"),
    (["profile", "{trace}"], "required"),
    (["profile", "{trace}", "--format", "flame"], "flame"),
], ids=str)
def test_command_specific_misuse(env, capfd, args, words):
    code, err = in_process([a.format(trace=env.trace) for a in args], capfd)
    assert_one_line(code, err, words)
