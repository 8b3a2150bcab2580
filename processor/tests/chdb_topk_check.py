#!/usr/bin/env python3
"""Merges Gallop's partial topK(10) states on a modern ClickHouse (chDB, PyPI `chdb-core`).

Usage (from the workspace root, after `cargo build -p gallop-processor --example topk_zipf`):

    python3 processor/tests/chdb_topk_check.py [path/to/topk_zipf]

The example prints 20 partial states over Zipf data and the true top 5; this script feeds
the raw states to `topKMerge(10)` through `format(RowBinary, ...)` and checks that the
merged top 5 is the true top 5. Exits non-zero otherwise. ClickHouse 18.16 fails this (its
merge loses keys, see processor/src/sketch/topk.rs); this checks whether a current release
merges Gallop's states correctly. Not run by `cargo test`: it needs Python and chdb-core.
"""

import os
import subprocess
import sys

import chdb


def main():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(target, "debug", "examples", "topk_zipf")
    lines = subprocess.run([binary], check=True, capture_output=True, text=True).stdout.split()
    states = [bytes.fromhex(line) for line in lines if line != "TOP5" and not line.startswith("/")]
    top5 = lines[-1].split(",")
    data = b"".join(states)
    literal = "".join(f"\\x{b:02x}" for b in data)
    version = str(chdb.query("SELECT version()", "TabSeparatedRaw")).strip()
    sql = (f"SELECT arrayStringConcat(topKMerge(10)(s), ',') FROM "
           f"format(RowBinary, 's AggregateFunction(topK(10), String)', '{literal}')")
    merged = str(chdb.query(sql, "TabSeparatedRaw")).strip().split(",")
    print(f"chDB ClickHouse {version}: {len(states)} partial states")
    print(f"  true top 5:   {top5}")
    print(f"  merged top 5: {merged[:5]}")
    ok = merged[:5] == top5
    print("  top 5 identical" if ok else "  top 5 DIFFERENT")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
