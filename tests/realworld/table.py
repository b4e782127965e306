"""Turn the measurements of a corpus run into the table of docs/reliability.md.

    python -m pytest tests/realworld --realworld-full --realworld-table /tmp/corpus.jsonl
    python tests/realworld/table.py /tmp/corpus.jsonl
"""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    rows: dict[str, dict[str, dict[str, object]]] = {}
    for line in open(path):
        row = json.loads(line)
        rows.setdefault(row["case"], {})[row["mode"]] = row
    print("| case | package | processes (native / traced) | threads | branches ring: kept / "
          "written | branches stream | own-code branches (stream) | native s | ring s | "
          "stream s | outcome |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, modes in rows.items():
        ring, stream = modes.get("ring", {}), modes.get("stream", {})
        any_ = stream or ring
        traced = any_.get("processes")
        traced = 1 if traced is None else traced
        native = any_.get("native_processes")
        outcome = "output identical" if ring and stream else \
            "failed in " + " and ".join(m for m in ("ring", "stream") if m not in modes)
        if native is not None and native != traced:
            outcome += f"; {native - traced} child process(es) not in the trace"
        print(f"| {name} | {any_['package']} | {_n(native)} / {traced} | {any_['threads']} | "
              f"{_n(ring.get('kept'))} / {_n(ring.get('written'))} | {_n(stream.get('kept'))} | "
              f"{_n(stream.get('own'))} | {any_['native_s']} | {ring.get('traced_s', '-')} | "
              f"{stream.get('traced_s', '-')} | {outcome} |")


def _n(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "-"

if __name__ == "__main__":
    main(sys.argv[1])
