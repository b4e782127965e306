"""The foundation's end-to-end promise: a crash, and the branches that led to it."""

from __future__ import annotations

import json

from conftest import FIXTURES, cli, marker_line


def test_json_crash_report_names_the_calls_and_lines(build, tmp_path):
    exe = build("crash")
    report = tmp_path / "report.json"
    result = cli("run", "--backend", "ptrace", "--last", "8", "--format", "json",
                 "--report-to", str(report), "--", str(exe))
    assert result.returncode == 128 + 11, result.stderr
    doc = json.loads(report.read_text())
    assert doc["exit"]["status"] == "signaled"
    assert doc["exit"]["signal"] == {"number": 11, "name": "SIGSEGV",
                                     "description": "Segmentation fault"}
    assert doc["exit"]["fault_address"] == 0
    assert doc["exit"]["fault_pc"]["function"] == "step2"
    assert doc["exit"]["fault_pc"]["line"] == marker_line("crash.c", "CRASH_LINE")
    assert doc["exit"]["fault_instruction"].startswith("mov")
    branches = doc["branches"]
    assert 0 < len(branches) <= 8
    assert [b["index"] for b in branches] == list(range(-len(branches), 0))
    calls = [(b["from"]["function"], b["to"]["function"], b["from"]["line"], b["to"]["offset"])
             for b in branches if b["kind"] == "call"]
    assert calls[-2:] == [
        ("main", "step1", marker_line("crash.c", "CALL_STEP1"), 0),
        ("step1", "step2", marker_line("crash.c", "CALL_STEP2"), 0),
    ]
    for b in branches:
        assert b["thread"] == doc["thread"] == doc["pid"]
        assert b["from"]["module"].endswith("crash") and b["to"]["file"].endswith("crash.c")


def test_text_crash_report_reads_like_perf_script(build):
    exe = build("crash")
    result = cli("run", "--backend", "ptrace", "--last", "4", "--", str(exe))
    assert result.returncode == 139
    err = result.stderr
    assert "killed by SIGSEGV (Segmentation fault)" in err
    assert "fault address: 0x0" in err
    line = marker_line("crash.c", "CALL_STEP2")
    assert any(ln.split()[1:2] == ["call"] and "step1+0x" in ln and f"crash.c:{line}" in ln
               and "=>" in ln and "step2+0x0 (crash)" in ln for ln in err.splitlines()), err
    assert "Traceback" not in err


def test_normal_exit_prints_nothing_unless_asked(build):
    exe = build("loop")
    quiet = cli("run", "--backend", "ptrace", "--", str(exe), "10")
    assert quiet.returncode == 0
    assert quiet.stderr == "" and quiet.stdout == ""
    loud = cli("run", "--backend", "ptrace", "--report", "always", "--last", "3", "--", str(exe), "10")
    assert loud.returncode == 0
    assert "exited with status 0" in loud.stderr
    assert "Last 3 branches" in loud.stderr


def test_exit_status_is_the_programs(build, tmp_path):
    src = tmp_path / "seven.c"
    src.write_text("int main(void) { return 7; }\n")
    import subprocess

    exe = tmp_path / "seven"
    subprocess.run(["gcc", "-o", str(exe), str(src)], check=True)
    assert cli("run", "--backend", "ptrace", "--", str(exe)).returncode == 7


def test_demo_runs_the_shipped_example(tmp_path):
    import os

    result = cli("demo", env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 139, result.stderr
    assert "killed by SIGSEGV" in result.stderr
    assert "record_visit" in result.stderr and "find_user" in result.stderr
    assert (tmp_path / "branchtrace" / "demo" / "demo_crash").exists()


def test_a_binary_changed_since_the_trace_is_not_disassembled(tmp_path):
    import subprocess

    source = (FIXTURES / "crash.c").read_text()
    src, exe, trace = tmp_path / "crash.c", tmp_path / "crash", tmp_path / "crash.btrace"
    src.write_text(source)
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(src)], check=True)
    recorded = cli("run", "--backend", "ptrace", "--report", "never", "-o", str(trace),
                   "--", str(exe))
    assert recorded.returncode == 139, recorded.stderr
    before = cli("crash", str(trace))
    assert before.returncode == 0, before.stderr
    assert "  instruction:   mov" in before.stdout and "cannot disassemble" not in before.stdout
    # the same program, rebuilt in place with other code: another build id
    src.write_text(source.replace("return 0;", "return 3;"))
    exe.unlink()
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(src)], check=True)
    note = f"cannot disassemble: {exe} changed since the trace (build id differs)"
    text = cli("crash", str(trace))
    assert text.returncode == 0, text.stderr
    assert f"  instruction:   ({note})\n" in text.stdout
    assert "  instruction:   mov" not in text.stdout
    assert f"warning: {exe} changed since the trace" in text.stderr
    doc = json.loads(cli("crash", "--format", "json", str(trace)).stdout)
    assert doc["exit"]["fault_instruction"] is None
    assert doc["exit"]["fault_instruction_note"] == note
