"""The real-program corpus: programs from Debian packages, each run natively and traced.

One row per case: the command (run in a fresh copy of its inputs, see ``inputs.py``), the
Debian package it comes from, the programs it needs installed, whose code must show in the
trace, whether it starts other processes, and whether it is in the quick subset CI runs by
default (``--realworld-full`` runs every case).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]
    package: str                     # the Debian package(s), for the table and .ci/run
    inputs: tuple[str, ...] = ()     # names from inputs.INPUTS, written into the work dir
    needs: tuple[str, ...] = ()      # programs that must be on PATH (default: argv[0])
    #: fnmatch pattern of the module (file name) whose own code must have branches in the
    #: trace, not only libc and the loader: the executable (default: argv[0]'s file name),
    #: or the library doing the work when the executable is a thin front end (bzip2).
    main: str = ""
    children: bool = False           # forks or execs: every process must be in the trace
    quick: bool = False              # in the default subset
    stdin: str = ""                  # an input file fed as standard input
    #: Known output differences under tracing, by mode: the cause, for an
    #: xfail(strict=True) (a real bug, recorded, never hidden).
    known_bug: tuple[tuple[str, str], ...] = ()

    @property
    def programs(self) -> tuple[str, ...]:
        return self.needs or (self.argv[0],)

    @property
    def main_module(self) -> str:
        return self.main or self.argv[0].rsplit("/", 1)[-1]


def sh(command: str) -> tuple[str, ...]:
    return ("sh", "-c", command)


def bash(command: str) -> tuple[str, ...]:
    return ("bash", "-c", command)


_TAR_DET = "--sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner"

CASES: list[Case] = [
    # coreutils
    Case("ls-lR", ("ls", "-lAR", "--time-style=+%Y-%m-%d", "tree"), "coreutils",
         ("tree",), quick=True),
    Case("ls-missing", ("ls", "-l", "tree", "no-such-file"), "coreutils", ("tree",)),
    Case("sort", ("sort", "-k2", "big.txt"), "coreutils", ("big.txt",), quick=True),
    Case("sort-numeric-unique", ("sort", "-t", " ", "-k1,1nr", "-u", "medium.txt"),
         "coreutils", ("medium.txt",)),
    Case("wc", ("wc", "-lwmc", "big.txt", "medium.txt"), "coreutils",
         ("big.txt", "medium.txt")),
    Case("sha256sum", ("sha256sum", "big.txt", "medium.txt"), "coreutils",
         ("big.txt", "medium.txt")),
    Case("md5sum-stdin", ("md5sum",), "coreutils", ("big.txt",), stdin="big.txt"),
    Case("tr-cut-uniq", sh("cut -d' ' -f2- medium.txt | tr -cs 'a-z' '\\n' | sort | uniq -c"
                           " | sort -k1,1nr -k2 | head -25"),
         "coreutils, dash", ("medium.txt",), needs=("sh", "cut", "tr", "sort", "uniq", "head"),
         main="dash", children=True, quick=True),
    # findutils
    Case("find", ("find", "tree", "-name", "*.c", "-o", "-size", "+4k", "-print"),
         "findutils", ("tree",)),
    Case("find-exec", ("find", "tree", "-type", "f", "-name", "*.md", "-exec", "wc", "-l",
                       "{}", "+"), "findutils, coreutils", ("tree",), needs=("find", "wc"),
         children=True),
    Case("find-xargs", sh("find tree -type f | sort | xargs -n 7 sha256sum"),
         "findutils, coreutils", ("tree",), needs=("sh", "find", "sort", "xargs", "sha256sum"),
         main="dash", children=True),
    # grep, sed, gawk
    Case("grep-count", ("grep", "-cE", "(ka|lo)+mi[a-z]*ne", "big.txt"), "grep",
         ("big.txt",)),
    Case("grep-recursive", ("grep", "-rn", "--include=*.c", "line 1[0-9]7 ", "tree"), "grep",
         ("tree",)),
    Case("grep-no-match", ("grep", "zzzzqqq", "medium.txt"), "grep", ("medium.txt",)),
    Case("sed", ("sed", "-E", "s/([a-z]+) ([a-z]+)/\\2_\\1/g; /9$/d", "medium.txt"), "sed",
         ("medium.txt",), quick=True),
    Case("gawk", ("gawk", "{ for (i = 2; i <= NF; i++) n[$i]++ } END "
                  "{ PROCINFO[\"sorted_in\"] = \"@val_num_desc\"; k = 0;"
                  " for (w in n) if (k++ < 20) printf \"%s %d\\n\", w, n[w] }", "big.txt"),
         "gawk", ("big.txt",), quick=True),
    # archives and compressors
    Case("tar-czf", ("tar", *_TAR_DET.split(), "-czf", "-", "tree"), "tar, gzip", ("tree",),
         needs=("tar", "gzip"), children=True, quick=True),
    Case("tar-tzvf", ("tar", "-tzvf", "tree.tar.gz"), "tar, gzip", ("tree.tar.gz",),
         needs=("tar", "gzip"), children=True),
    Case("gzip", ("gzip", "-9c", "medium.txt"), "gzip", ("medium.txt",)),
    Case("gunzip", ("gzip", "-dc", "medium.txt.gz"), "gzip", ("medium.txt.gz",)),
    Case("bzip2", ("bzip2", "-c", "medium.txt"), "bzip2", ("medium.txt",), main="libbz2.so*",
         quick=True),
    Case("bunzip2", ("bzip2", "-dc", "medium.txt.bz2"), "bzip2", ("medium.txt.bz2",),
         main="libbz2.so*"),
    Case("xz", ("xz", "-c", "-6", "medium.txt"), "xz-utils", ("medium.txt",),
         main="liblzma.so*"),
    Case("unxz", ("xz", "-dc", "medium.txt.xz"), "xz-utils", ("medium.txt.xz",),
         main="liblzma.so*"),
    # databases and data
    Case("sqlite3", ("sqlite3", "corpus.db"), "sqlite3", ("script.sql",), stdin="script.sql",
         main="libsqlite3.so*", quick=True),
    Case("jq", ("jq", "-c", "[.items[] | select(.price > 250 and (.tags | index(\"red\")))"
                " | {id, w: .stock.warehouse}] | group_by(.w) | map({w: .[0].w, n: length})",
                "data.json"), "jq", ("data.json",), main="libjq.so*", quick=True),
    Case("jq-error", ("jq", ".items[0].name | tonumber", "data.json"), "jq", ("data.json",),
         main="libjq.so*"),
    # interpreters
    Case("perl", ("perl", "-ne", "$n{$_}++ for /\\b([a-z]{5,})\\b/g; END { print \"$_ $n{$_}\\n\""
                  " for (sort { $n{$b} <=> $n{$a} || $a cmp $b } keys %n)[0..14] }",
                  "medium.txt"), "perl", ("medium.txt",), quick=True),
    Case("perl-fork", ("perl", "-e", "$| = 1; my @k; for my $i (1..3) { my $p = fork;"
                       " if (!$p) { print \"child $i\\n\"; exit $i } waitpid($p, 0);"
                       " push @k, $? >> 8 } print \"parent saw @k\\n\"; exit 0"), "perl",
         children=True),
    Case("python3", ("/usr/bin/python3", "script.py", "medium.txt"), "python3",
         ("script.py", "medium.txt"), main="python3*"),
    Case("python3-shim", ("./python3-shim", "script.py", "medium.txt"), "python3, bash",
         ("python3-shim", "script.py", "medium.txt"), needs=("env", "bash", "/usr/bin/python3"),
         main="python3*", children=True, quick=True),
    Case("python3-subprocess", ("/usr/bin/python3", "-c",
                                "import subprocess, sys; r = subprocess.run(['sh', '-c',"
                                " 'echo from child; echo to stderr >&2; exit 3']);"
                                " print('child exit', r.returncode); sys.exit(r.returncode + 1)"),
         "python3, dash", needs=("/usr/bin/python3", "sh"), main="python3*", children=True),
    # git, make, gdb
    Case("git-log", ("git", "-C", "repo", "log", "--stat", "--format=%H %an %ad %s",
                     "--date=iso"), "git", ("repo",), quick=True),
    Case("git-status-diff", sh("cd repo && git status --short --branch && git diff --stat"
                               " && git rev-list --count HEAD"), "git, dash", ("repo",),
         needs=("sh", "git"), main="dash", children=True),
    Case("make", ("make", "--no-print-directory"), "make, coreutils", ("Makefile", "tree"),
         needs=("make", "sh", "wc", "cat", "tr", "sort", "uniq", "head", "mkdir"),
         # back in the quick subset since children and new images wait parked
         # (stalker/hold.py): before, a grandchild's new image went unrecorded without a
         # note in 3 runs of 12; parked, 0 in 20 (under a CPU hog)
         children=True, quick=True),
    Case("gdb-batch", ("gdb", "-nx", "--batch", "-ex", "print 6 * 7",
                       "-ex", "print sizeof(long double)", "-ex", "print $_strlen(\"corpus\")",
                       "-ex", "print/x 48879", "-ex", "show language", "-ex", "print 1.0 / 3"),
         "gdb",
         needs=("gdb", "iconv"), children=True),  # gdb runs `iconv -l` at startup
    Case("gdb-version", ("gdb", "--version"), "gdb", needs=("gdb", "iconv"), children=True),
    Case("node", ("node", "-e", "const c = {}; for (let i = 0; i < 200000; i++)"
                  " { const k = (i * 7919) % 97; c[k] = (c[k] || 0) + 1 }"
                  " console.log(JSON.stringify(Object.entries(c).slice(0, 5)),"
                  " [3, 1, 2].sort().join())"), "nodejs"),
    Case("node-child", ("node", "-e", "const cp = require('child_process');"
                        " const r = cp.spawnSync('sh', ['-c', 'echo spawned; exit 2']);"
                        " process.stdout.write(r.stdout); console.log('status', r.status)"),
         "nodejs, dash", needs=("node", "sh"), children=True),
    # shells
    Case("bash-loop", bash("for f in tree/*/*/*; do printf '%s %s\\n' \"$(wc -l < \"$f\")\""
                           " \"$f\"; done | sort -n | tail -5; exit 7"), "bash, coreutils",
         ("tree",), needs=("bash", "wc", "sort", "tail"), children=True),
    Case("diff", ("diff", "-u", "tree/alpha/one/file0.txt", "tree/alpha/two/file0.txt"),
         "diffutils", ("tree",)),
]


def by_name(name: str) -> Case:
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(name)
