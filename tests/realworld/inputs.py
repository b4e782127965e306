"""Input files for the real-program corpus, written deterministically into a directory.

Every generator takes the directory and writes the same bytes on every machine and every
run (a seeded :class:`random.Random`, fixed dates); :func:`freeze` then gives every file
and directory the same modification time, so `ls -l`, `tar` and `make` see the same tree
natively and under tracing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

#: The modification time of every generated file and directory (2023-11-14 22:13:20 UTC).
FROZEN_MTIME = 1_700_000_000

#: Who commits, and no system configuration or pager: part of every run's environment.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Corpus Author", "GIT_AUTHOR_EMAIL": "author@example.org",
    "GIT_COMMITTER_NAME": "Corpus Committer", "GIT_COMMITTER_EMAIL": "committer@example.org",
    "GIT_CONFIG_NOSYSTEM": "1", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0",
}


def base_env(home: Path) -> dict[str, str]:
    """The environment of every run (native and traced): no locale, timezone, colour or
    user configuration can make two runs differ."""
    return {
        "PATH": "/usr/bin:/bin", "HOME": str(home), "LC_ALL": "C", "LANG": "C", "TZ": "UTC",
        "TERM": "dumb", "NO_COLOR": "1", "PAGER": "cat", "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(home), **GIT_ENV,
    }


_SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "vo", "pe", "za", "qu", "ex", "on",
              "ar", "il", "ut", "br", "st", "ch", "gl"]


def _vocabulary(rng: random.Random, n: int) -> list[str]:
    words = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def text(path: Path, size: int, seed: int = 12) -> None:
    """About ``size`` bytes of lines of words (a Zipf-like mix, some numbers and
    punctuation), the same for the same seed."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng, 3000)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    lines: list[str] = []
    total = 0
    number = 0
    while total < size:
        number += 1
        words = rng.choices(vocab, weights, k=rng.randint(3, 14))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
        line = f"{number:07d} " + " ".join(words) + rng.choice(["", ".", ",", "!", "?"])
        lines.append(line)
        total += len(line) + 1
    path.write_text("\n".join(lines) + "\n")


def tree(root: Path, seed: int = 5) -> None:
    """A small source-like tree: 3 levels, 36 files of 0-20 KB, a symlink to a directory,
    an empty directory."""
    rng = random.Random(seed)
    for a in ("alpha", "beta", "gamma"):
        for b in ("one", "two", "three"):
            d = root / "tree" / a / b
            d.mkdir(parents=True)
            for i in range(4):
                ext = (".txt", ".c", ".md", ".log")[i]
                lines = [f"{a}/{b}/{i} line {j} value {rng.randint(0, 1 << 20)}"
                         for j in range(rng.randint(0, 400))]
                (d / f"file{i}{ext}").write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "tree" / "empty").mkdir()
    (root / "tree" / "link").symlink_to("alpha/one")


def json_doc(path: Path, seed: int = 7) -> None:
    rng = random.Random(seed)
    items = [{"id": i, "name": f"item-{i:05d}", "price": round(rng.uniform(0, 500), 2),
              "tags": rng.sample(["red", "green", "blue", "small", "large", "new", "old"],
                                 k=rng.randint(0, 3)),
              "stock": {"warehouse": rng.choice(["north", "south", "east"]),
                        "count": rng.randint(0, 1000)}}
             for i in range(3000)]
    path.write_text(json.dumps({"version": 3, "items": items}, indent=1) + "\n")


SQL_SCRIPT = """\
create table item(id integer primary key, name text, grp integer, price real);
with recursive n(x) as (select 1 union all select x + 1 from n where x < 20000)
insert into item select x, printf('item-%05d', x), x % 17, (x * 7919 % 1000) / 10.0 from n;
create index item_grp on item(grp);
select grp, count(*), printf('%.2f', sum(price)), min(name), max(name) from item group by grp order by grp;
select count(*) from item a join item b on a.id = b.id + 1 where a.price > b.price;
update item set price = price * 2 where grp = 3;
select printf('%.2f', avg(price)) from item;
delete from item where id % 5 = 0;
select count(*), total(price) from item;
"""

PYTHON_SCRIPT = """\
import collections, decimal, fractions, hashlib, json, re, sys
words = re.findall(r"[a-z]+", open(sys.argv[1]).read())
common = collections.Counter(words).most_common(10)
print(json.dumps(common))
print(hashlib.sha256(" ".join(words[:5000]).encode()).hexdigest())
print(sum(fractions.Fraction(1, n) for n in range(1, 200)).denominator % 1000003)
decimal.getcontext().prec = 50
print(decimal.Decimal(2).sqrt())
print(sorted({w[::-1] for w in words[:2000]})[:5])
"""

MAKEFILE = """\
all: out/report.txt
\t@echo all done

out:
\tmkdir -p out

out/sizes.txt: | out
\twc -c tree/alpha/one/* > $@

out/words.txt: | out
\tcat tree/beta/two/* | tr -cs 'a-z' '\\n' | sort | uniq -c | sort -rn | head -5 > $@

out/report.txt: out/sizes.txt out/words.txt
\tcat out/sizes.txt out/words.txt > $@
\t@echo lines: $$(wc -l < $@)

.PHONY: all
"""

SHIM = """\
#!/usr/bin/env bash
# Like a pyenv shim: a script that execs the real interpreter.
set -e
exec /usr/bin/python3 "$@"
"""


def git_repo(root: Path, env: dict[str, str]) -> None:
    """A repository of 6 commits at fixed dates (the same hashes everywhere), plus an
    uncommitted change and an untracked file."""
    repo = root / "repo"
    repo.mkdir()

    def git(*args: str, date: int = 0) -> None:
        stamp = f"@{FROZEN_MTIME + date * 3600} +0000"
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                       env={**env, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp})

    git("init", "-q", "-b", "main")
    rng = random.Random(3)
    for n in range(6):
        for f in range(n + 1):
            with (repo / f"file{f}.txt").open("a") as out:
                out.write("".join(f"commit {n} line {rng.randint(0, 9999)}\n" for _ in range(20)))
        git("add", "-A")
        git("commit", "-q", "-m", f"change {n}: {n + 1} files", date=n)
    with (repo / "file0.txt").open("a") as out:
        out.write("not committed\n")
    (repo / "untracked.txt").write_text("new\n")


def freeze(root: Path) -> None:
    """Give every file, symlink and directory under ``root`` the same mtime (deepest first,
    so setting a file's time does not change its directory's afterwards)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (FROZEN_MTIME, FROZEN_MTIME),
                     follow_symlinks=False)
    os.utime(root, (FROZEN_MTIME, FROZEN_MTIME))


def _compressed(root: Path, name: str) -> None:
    import bz2
    import gzip
    import lzma

    data = (root / "medium.txt").read_bytes()
    packers = {".gz": lambda d: gzip.compress(d, 6, mtime=FROZEN_MTIME),
               ".bz2": bz2.compress, ".xz": lzma.compress}
    (root / name).write_bytes(packers[Path(name).suffix](data))


def _tarball(root: Path) -> None:
    import gzip
    import io
    import tarfile

    def fixed(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = FROZEN_MTIME, 0, 0, "", ""
        return info

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.add(root / "tree", arcname="tree", filter=fixed)
    (root / "tree.tar.gz").write_bytes(gzip.compress(buf.getvalue(), 6, mtime=0))


#: What a case may ask for, by name: a file or directory written into its work directory.
#: Some need others first (a compressed file needs medium.txt): list those before them.
INPUTS = {
    "big.txt": lambda root, env: text(root / "big.txt", 2 << 20),
    "medium.txt": lambda root, env: text(root / "medium.txt", 512 << 10, seed=13),
    "medium.txt.gz": lambda root, env: _compressed(root, "medium.txt.gz"),
    "medium.txt.bz2": lambda root, env: _compressed(root, "medium.txt.bz2"),
    "medium.txt.xz": lambda root, env: _compressed(root, "medium.txt.xz"),
    "tree": lambda root, env: tree(root),
    "tree.tar.gz": lambda root, env: _tarball(root),
    "data.json": lambda root, env: json_doc(root / "data.json"),
    "script.sql": lambda root, env: (root / "script.sql").write_text(SQL_SCRIPT),
    "script.py": lambda root, env: (root / "script.py").write_text(PYTHON_SCRIPT),
    "Makefile": lambda root, env: (root / "Makefile").write_text(MAKEFILE),
    "python3-shim": lambda root, env: _executable(root / "python3-shim", SHIM),
    "repo": git_repo,
}


def _executable(path: Path, content: str) -> None:
    path.write_text(content)
    path.chmod(0o755)


def write(names: tuple[str, ...], root: Path, env: dict[str, str]) -> None:
    """Write the inputs ``names`` into ``root`` (with what they need), then freeze their
    times."""
    needed = {"medium.txt.gz": ("medium.txt",), "medium.txt.bz2": ("medium.txt",),
              "medium.txt.xz": ("medium.txt",), "tree.tar.gz": ("tree",)}
    done: set[str] = set()
    for name in names:
        for first in (*needed.get(name, ()), name):
            if first not in done:
                INPUTS[first](root, env)
                done.add(first)
    freeze(root)
