#!/usr/bin/env python3
"""ClickHouse's HTTP interface, served by a current ClickHouse embedded through chDB.

Gallop's sink talks to ClickHouse over HTTP. ClickHouse 18.16 (Debian) is the server the
tests run against; this script lets the same Rust code and the same integration tests run
against a current release too, without a second server install: chDB (PyPI `chdb-core`) is
ClickHouse itself as a library. The script answers the subset of the HTTP interface the
`clickhouse` crate and the tests use:

- a query in the POST body (or in the `query` URL parameter), `default_format`, and any
  other URL parameter applied as a setting for that one query;
- `INSERT INTO <table> FORMAT RowBinary` with the rows in the body, LZ4-compressed in
  ClickHouse's block format when `decompress=1` (the checksums are not verified);
- errors as HTTP 500 with ClickHouse's own `Code: N. DB::Exception: ...` text.

Queries run one at a time in one chDB session whose data lives in a temporary directory,
removed on exit. Usage:

    python3 sink/tests/chdb_server.py [--port-file FILE]

It listens on 127.0.0.1 on a free port and writes `http://127.0.0.1:<port>` to FILE (or
stdout) once it answers. Needs `pip install chdb-core lz4`.
"""

import argparse
import os
import re
import shutil
import struct
import sys
import tempfile
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import lz4.block
from chdb import session

# URL parameters that are part of the HTTP protocol, not settings.
PROTOCOL_PARAMS = {"query", "default_format", "database", "decompress", "compress", "user", "password",
                   "session_id", "query_id", "role", "wait_end_of_query"}
INSERT_ROWBINARY = re.compile(r"^\s*INSERT\s+INTO\s+(\S+)\s+FORMAT\s+RowBinary\s*$", re.IGNORECASE)
SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ServerError(Exception):
    """An error to answer with HTTP 500 and ClickHouse's message."""


def decompress_blocks(data):
    """ClickHouse's compressed format: blocks of checksum(16) method(1) size(4) raw size(4) data."""
    out = bytearray()
    at = 0
    while at < len(data):
        if len(data) - at < 25:
            raise ServerError("Code: 432. DB::Exception: truncated compressed block header")
        method = data[at + 16]
        size, raw = struct.unpack_from("<II", data, at + 17)
        payload = data[at + 25:at + 16 + size]
        if method == 0x82:
            out += lz4.block.decompress(payload, uncompressed_size=raw)
        elif method == 0x02:
            out += payload
        else:
            raise ServerError(f"Code: 432. DB::Exception: compression method 0x{method:02x} is not supported here")
        at += 16 + size
    return bytes(out)


def quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Backend:
    """One chDB session, used by one request at a time."""

    def __init__(self, path):
        self.session = session.Session(path)
        self.lock = threading.Lock()
        self.scratch = os.path.join(path, "inserts")
        os.makedirs(self.scratch, exist_ok=True)

    def run(self, sql, fmt="TabSeparated"):
        try:
            return self.session.query(sql, fmt).bytes()
        except Exception as error:  # chDB raises ChdbError with the server's message
            raise ServerError(str(error)) from error

    def answer(self, params, body):
        settings = {k: v for k, v in params.items() if k not in PROTOCOL_PARAMS}
        for name in settings:
            if not SETTING_NAME.match(name):
                raise ServerError(f"Code: 115. DB::Exception: Unknown setting {name}")
        with self.lock:
            for name, value in settings.items():
                self.run(f"SET {name} = {quote(value)}")
            try:
                return self.query(params, body)
            finally:
                for name in settings:
                    self.run(f"SET {name} = DEFAULT")

    def query(self, params, body):
        if "query" in params:
            sql, data = params["query"], body
        else:
            sql, data = body.decode("utf-8"), b""
        insert = INSERT_ROWBINARY.match(sql)
        if insert:
            if params.get("decompress") == "1":
                data = decompress_blocks(data)
            return self.insert_rowbinary(insert.group(1), data)
        if data:
            raise ServerError("Code: 48. DB::Exception: only INSERT ... FORMAT RowBinary takes data here")
        return self.run(sql, params.get("default_format", "TabSeparated"))

    def insert_rowbinary(self, table, data):
        parts = [p.strip("`") for p in table.split(".")]
        database, name = (parts[0], parts[1]) if len(parts) == 2 else ("default", parts[0])
        columns = self.run(
            f"SELECT name, type FROM system.columns WHERE database = {quote(database)} AND table = {quote(name)} "
            "ORDER BY position", "TabSeparatedRaw").decode("utf-8")
        structure = ", ".join(f"`{n}` {t}" for n, t in (line.split("\t") for line in columns.splitlines()))
        if not structure:
            raise ServerError(f"Code: 60. DB::Exception: Table {database}.{name} does not exist")
        fd, path = tempfile.mkstemp(dir=self.scratch, suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return self.run(f"INSERT INTO {table} SELECT * FROM file({quote(path)}, 'RowBinary', {quote(structure)})")
        finally:
            os.unlink(path)


def handler(backend):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.reply(200, b"Ok.\n")

        def do_POST(self):
            params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query, keep_blank_values=True))
            body = self.read_body()
            try:
                self.reply(200, backend.answer(params, body))
            except ServerError as error:
                message = str(error)
                code = re.match(r"Code: (\d+)", message)
                self.reply(500, (message + "\n").encode("utf-8"), code.group(1) if code else "1000")

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(body)
                    body += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", "0")))

        def reply(self, status, payload, exception_code=None):
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=UTF-8")
            self.send_header("Content-Length", str(len(payload)))
            if exception_code:
                self.send_header("X-ClickHouse-Exception-Code", exception_code)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", help="write the URL here instead of stdout")
    args = parser.parse_args()
    path = tempfile.mkdtemp(prefix="gallop-chdb-")
    try:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler(Backend(path)))
        url = f"http://127.0.0.1:{server.server_address[1]}"
        if args.port_file:
            with open(args.port_file + ".tmp", "w") as f:
                f.write(url)
            os.replace(args.port_file + ".tmp", args.port_file)
        else:
            print(url, flush=True)
        server.serve_forever()
    finally:
        shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
