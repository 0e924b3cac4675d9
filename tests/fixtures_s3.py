"""A real S3 API for the tests: moto's server on a loopback port, started and stopped by the test module that
uses the ``s3`` fixture, with fake credentials in the environment (the S3 client's own way to find them)."""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

import pytest

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
s3fs = pytest.importorskip("s3fs")

KEY_ID, SECRET = "AKIAFAKEI2XTESTKEY01", "fake/i2x+secret+never+stored+0123456789"


class RequestLog:
    """What the server answered, recorded as a WSGI middleware around moto's app: per request the method, the
    key's path (``bucket/key``) and the body bytes sent, so a test counts the GETs and bytes of an object."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app, self.entries, self._lock = app, [], threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        sent = 0
        try:
            for chunk in self.app(environ, start_response):
                sent += len(chunk)
                yield chunk
        finally:
            with self._lock:
                self.entries.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "").lstrip("/"), sent))

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def gets(self, prefix: str = "") -> Counter:
        """GET requests per key under ``prefix`` (``bucket/prefix``)."""
        with self._lock:
            return Counter(path for method, path, _ in self.entries if method == "GET" and path.startswith(prefix))

    def bytes_sent(self, prefix: str = "") -> Counter:
        """Body bytes the server sent per key under ``prefix``."""
        total: Counter = Counter()
        with self._lock:
            for method, path, sent in self.entries:
                if path.startswith(prefix):
                    total[path] += sent
        return total


_LOG: list[RequestLog] = []  # the running server's log (one server per test module)


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server on 127.0.0.1 (a free port), the environment pointing the S3 client at it."""
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_ENDPOINT_URL", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")}
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    log = RequestLog(server._server.app)  # every request passes through the log before moto answers it
    server._server.app = log
    _LOG[:] = [log]
    s3fs.S3FileSystem.clear_instance_cache()  # fsspec reuses clients, which would still talk to an earlier server
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
                      AWS_CONFIG_FILE="/nonexistent")
    try:
        yield boto3.client("s3")
    finally:
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def s3_requests(s3) -> RequestLog:
    """The S3 server's request log, emptied for this test."""
    _LOG[0].clear()
    return _LOG[0]


def make_bucket(s3, name: str) -> str:
    s3.create_bucket(Bucket=name)
    return name


def upload(s3, bucket: str, local: Path, prefix: str) -> None:
    for file in sorted(p for p in local.rglob("*") if p.is_file()):
        s3.upload_file(str(file), bucket, f"{prefix}/{file.relative_to(local).as_posix()}")


def keys(s3, bucket: str, prefix: str = "") -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
