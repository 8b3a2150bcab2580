#!/usr/bin/env python3
"""Checks Gallop's uniqHLL12 states against a modern ClickHouse (chDB, PyPI `chdb-core`).

Usage (from the workspace root, after `cargo build -p gallop-processor --example hll_state`):

    python3 processor/tests/chdb_check.py [path/to/hll_state]

For every N and both argument kinds it compares the hex state printed by the `hll_state`
example with `uniqHLL12State` computed by chDB over the same inputs (see the example's docs
for the SQL twin), single-threaded so the small set keeps row order. Exits non-zero on any
difference. Not run by `cargo test`: it needs Python and chdb-core.
"""

import os
import subprocess
import sys

import chdb

SIZES = [0, 1, 15, 16, 17, 100, 10_000, 1_000_000]
SEED = 42


def gallop_hex(binary, seed, n, kind):
    out = subprocess.run([binary, str(seed), str(n), kind], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def server_hex(seed, n, kind):
    x = f"intHash64(number + {seed})"
    expr = x if kind == "u64" else (
        f"substring(concat(toString({x}), toString({x}), toString({x}), toString({x})), 1, {x} % 81)")
    sql = (f"SELECT hex(toString(uniqHLL12State({expr}))) FROM "
           f"(SELECT number FROM system.numbers LIMIT {n}) SETTINGS max_threads = 1")
    return str(chdb.query(sql, "TabSeparatedRaw")).strip()


def main():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(target, "debug", "examples", "hll_state")
    version = str(chdb.query("SELECT version()", "TabSeparatedRaw")).strip()
    print(f"chDB ClickHouse {version}")
    failures = 0
    for kind in ("u64", "str"):
        for n in SIZES:
            ours, theirs = gallop_hex(binary, SEED, n, kind), server_hex(SEED, n, kind)
            same = ours == theirs
            failures += not same
            print(f"{kind:>3} n={n:>7}: {'identical' if same else 'DIFFERENT'} ({len(ours) // 2} bytes)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
