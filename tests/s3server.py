"""A throwaway S3 for tests: moto's server mode on a free loopback port, one bucket, the usual AWS
environment variables pointing at it, stopped at the end.

The server is moto's real HTTP server (`ThreadedMotoServer`, the in-process form of
`moto_server`), so s3fs and botocore talk to it exactly as to S3: signed requests, multipart
uploads, listings by prefix. Child processes (the CLI, a killed saver) reach it through the
environment variables, which they inherit.

Fixtures (import them into a test module: `from s3server import s3  # noqa: F401`):
- `s3` (session): an `S3` with the endpoint, credentials, bucket and a fresh-prefix helper;
  skips only when moto (with its server extra) or s3fs is not importable, and says so.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

BUCKET = "hpsearch-test"
KEY, SECRET, REGION = "testing-key", "testing-secret", "us-east-1"


@dataclass
class S3:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str

    @property
    def env(self) -> dict[str, str]:
        """The AWS environment variables botocore reads, pointing at this server."""
        return {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    @property
    def storage_options(self) -> dict[str, Any]:
        """The same as fsspec options, for a study file's `checkpoints.storage_options`."""
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET}

    def url(self, what: str = "t") -> str:
        """A fresh prefix of the bucket: s3://bucket/<what>-<random>."""
        return f"s3://{self.bucket}/{what}-{uuid.uuid4().hex[:12]}"

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=KEY,
            aws_secret_access_key=SECRET,
            region_name=REGION,
        )

    def keys(self, prefix: str) -> list[str]:
        """Every object key under `prefix` (a key prefix of the bucket, no s3://), straight from
        the server."""
        out: list[str] = []
        pages = self.client().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)


_started: list[S3] = []  # one server per test process, whichever module asks first


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start() -> S3:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    atexit.register(server.stop)  # the end of the test process, whichever module used it last
    host, port = server.get_host_and_port()
    s3 = S3(endpoint=f"http://{host}:{port}", bucket=BUCKET)
    s3.client().create_bucket(Bucket=BUCKET)
    return s3


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    for module in ("moto.server", "s3fs"):
        try:
            importlib.import_module(module)
        except ImportError:
            why = f"the S3 tests need moto[server] and s3fs: no {module}"
            if os.environ.get("CI") == "true":  # CI must not pass by skipping
                pytest.fail(f"{why}; CI=true: CI must not pass by skipping", pytrace=False)
            pytest.skip(why)
    if not _started:
        _started.append(_start())
    server = _started[0]
    saved = {k: os.environ.get(k) for k in server.env}
    os.environ.update(server.env)
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
