"""moto's S3-protocol server in a subprocess on loopback, for the object-storage tests.

The server and its starter are the bench's (data_juicer_accel/bench/local_s3.py:
one request at a time, on loopback, gone with the process that started it);
this adds boto3 helpers that inspect it. boto3 here only inspects the server;
the product talks to it with its own Rust client."""

from __future__ import annotations

import uuid
from typing import Any

import boto3
from botocore.config import Config

from data_juicer_accel.bench.local_s3 import ACCESS_KEY, REGION, SECRET_KEY, LocalS3Server, s3_env

__all__ = ["ACCESS_KEY", "REGION", "SECRET_KEY", "S3Server", "s3_client", "s3_env"]


def s3_client(endpoint: str, **config: Any) -> Any:
    """A boto3 S3 client for ``endpoint``; ``config`` goes to botocore's Config."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, **config),
    )


class S3Server(LocalS3Server):
    """Start with ``with S3Server() as server:`` (or ``start()``/``stop()``)."""

    def __init__(self) -> None:
        super().__init__()
        self._client: Any = None

    def __enter__(self) -> S3Server:
        self.start()
        return self

    # Inspection helpers for tests (boto3, straight to the server).

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint)
        return self._client

    def new_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def remove_bucket(self, bucket: str) -> None:
        """Delete a bucket with its objects and pending multipart uploads (moto holds them in memory)."""
        for upload in self.pending_multipart_uploads(bucket):
            self.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for key in self.list_keys(bucket):
            self.delete(bucket, key)
        self.client.delete_bucket(Bucket=bucket)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def flip_byte(self, bucket: str, key: str, offset: int) -> None:
        """Invert the byte at ``offset`` (negative: from the end) of an object, in place."""
        data = bytearray(self.get(bucket, key))
        data[offset] ^= 0xFF
        self.put(bucket, key, bytes(data))

    def pending_multipart_uploads(self, bucket: str) -> list[dict[str, Any]]:
        """Started but neither completed nor aborted multipart uploads: each has Key and UploadId."""
        uploads: list[dict[str, Any]] = self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return uploads
