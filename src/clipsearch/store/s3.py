"""A store on S3 (or an S3-compatible server): its location, its small files and its write lock.

The tables are Lance datasets, which read and write ``s3://`` natively given
``storage_options``; what this module adds is everything else a store keeps beside them
(``meta.json``, ``probe.json``, ``failed.json``, the ANN index files) and the lock that keeps a
second writer out.

:class:`S3Path` stands where a local store has a :class:`pathlib.Path`: the few path
operations the store uses (``/``, ``read_text``, ``write_bytes``, ``exists``, ``iterdir``,
``unlink``, ``stat``), each one S3 request through boto3. boto3 rather than
``pyarrow.fs.S3FileSystem`` because the lock needs a conditional put (``If-None-Match: *``),
which boto3 sends and pyarrow's filesystem cannot; one client for all the small files keeps
one set of credentials and one endpoint rule.

Credentials and endpoint come from the usual AWS environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``), or from ``storage_options`` given in Python (Lance's keys:
``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``, ``aws_region``,
``aws_endpoint``, ``allow_http``).

**The write lock on S3.** ``.write.lock`` is created with a conditional put, so of two writers
that start together exactly one gets it; it names its owner and an expiry that a thread of the
owner pushes forward every :data:`LOCK_HEARTBEAT` seconds. A writer that finds the lock held
and not expired is refused; an expired lock (its owner died without releasing it) is taken over
(deleted, on servers that support it only if it is still the same object, then put again
conditionally). What it cannot guarantee: a writer frozen for longer than :data:`LOCK_TTL`
(suspended, or cut off from S3) may find that another took over and both then write; each
Lance commit stays atomic even then (a version's manifest is one object, written whole), so no
table is torn, but the two runs' rows interleave. The heartbeat thread notes a lost lock
(:attr:`S3Lock.lost`), and the store refuses to commit once it has.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from clipsearch.errors import StoreError

LOCK_TTL = 60.0
"""Seconds a write lock stays valid without a heartbeat: after that another writer may take it."""
LOCK_HEARTBEAT = 10.0
"""Seconds between the owner's refreshes of its lock."""


def storage_options_from_env() -> dict[str, str]:
    """Lance ``storage_options`` from the usual AWS environment variables (those that are set)."""
    env = os.environ
    opts: dict[str, str] = {}
    for key, var in (
        ("aws_access_key_id", "AWS_ACCESS_KEY_ID"),
        ("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("aws_session_token", "AWS_SESSION_TOKEN"),
    ):
        if env.get(var):
            opts[key] = env[var]
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        opts["aws_region"] = region
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["aws_endpoint"] = endpoint
    return opts


def _complete(options: dict[str, str] | None) -> dict[str, str]:
    """``options`` over the environment's; plain ``http://`` endpoints allowed explicitly."""
    opts = {**storage_options_from_env(), **{k: str(v) for k, v in (options or {}).items()}}
    if opts.get("aws_endpoint", "").startswith("http://"):
        opts.setdefault("allow_http", "true")
    return opts


@dataclass(frozen=True)
class S3Path:
    """A key (or key prefix) in a bucket, with the options to reach it; see the module docstring."""

    bucket: str
    key: str = ""
    storage_options: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @classmethod
    def parse(cls, uri: str, storage_options: dict[str, str] | None = None) -> S3Path:
        """``s3://bucket/prefix`` (the prefix may be empty)."""
        rest = uri.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        if not bucket:
            raise StoreError(f"store URI {uri!r} names no bucket; use s3://BUCKET/PREFIX")
        return cls(bucket, key.strip("/"), _complete(storage_options))

    def __truediv__(self, name: str) -> S3Path:
        key = f"{self.key}/{name}" if self.key else str(name)
        return S3Path(self.bucket, key, self.storage_options)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> S3Path:
        return S3Path(self.bucket, self.key.rsplit("/", 1)[0] if "/" in self.key else "", self.storage_options)

    def resolve(self) -> S3Path:
        return self

    def expanduser(self) -> S3Path:
        return self

    # -- requests ------------------------------------------------------------------------------
    def client(self):
        return _client(tuple(sorted(self.storage_options.items())))

    def read_bytes(self) -> bytes:
        try:
            return self.client().get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except Exception as exc:  # noqa: BLE001 - botocore's errors, turned into what Path raises
            raise _os_error(exc, self) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def write_bytes(self, data: bytes) -> None:
        """One PUT: S3 shows readers the old object or the new one, never half (atomic by itself)."""
        try:
            self.client().put_object(Bucket=self.bucket, Key=self.key, Body=data)
        except Exception as exc:  # noqa: BLE001
            raise _os_error(exc, self) from None

    def stat(self) -> SimpleNamespace:
        """``st_size`` and ``st_mtime_ns`` (a number that changes with each new version: from the ETag)."""
        try:
            head = self.client().head_object(Bucket=self.bucket, Key=self.key)
        except Exception as exc:  # noqa: BLE001
            raise _os_error(exc, self) from None
        return SimpleNamespace(st_size=int(head["ContentLength"]), st_mtime_ns=hash(head.get("ETag", "")))

    def exists(self) -> bool:
        try:
            self.stat()
            return True
        except FileNotFoundError:
            return self.is_dir()

    def is_dir(self) -> bool:
        """Whether any object lies under this prefix (S3 has no folders of its own)."""
        prefix = f"{self.key}/" if self.key else ""
        try:
            got = self.client().list_objects_v2(Bucket=self.bucket, Prefix=prefix, MaxKeys=1)
        except Exception as exc:  # noqa: BLE001 - no such bucket, no access, no endpoint: one line
            raise StoreError(f"cannot reach {self}: {exc}") from None
        return bool(got.get("KeyCount"))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: S3 prefixes exist once something is written under them."""

    def iterdir(self) -> Iterator[S3Path]:
        """The immediate children (objects and sub-prefixes)."""
        prefix = f"{self.key}/" if self.key else ""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for p in page.get("CommonPrefixes", []):
                yield S3Path(self.bucket, p["Prefix"].rstrip("/"), self.storage_options)
            for obj in page.get("Contents", []):
                yield S3Path(self.bucket, obj["Key"], self.storage_options)

    def unlink(self, missing_ok: bool = False) -> None:
        self.client().delete_object(Bucket=self.bucket, Key=self.key)  # S3 deletes what is not there quietly

    def total_size(self) -> int:
        """Bytes of every object under this prefix."""
        prefix = f"{self.key}/" if self.key else ""
        total = 0
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            total += sum(int(o["Size"]) for o in page.get("Contents", []))
        return total


_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(options: tuple[tuple[str, str], ...]):
    """One boto3 client per set of options (clients are thread-safe and slow to make)."""
    with _CLIENTS_LOCK:
        if options not in _CLIENTS:
            try:
                import boto3
            except ImportError:
                raise StoreError("a store on S3 needs boto3: pip install 'clipsearch[s3]'") from None
            o = dict(options)
            _CLIENTS[options] = boto3.client(
                "s3",
                endpoint_url=o.get("aws_endpoint"),
                region_name=o.get("aws_region"),
                aws_access_key_id=o.get("aws_access_key_id"),
                aws_secret_access_key=o.get("aws_secret_access_key"),
                aws_session_token=o.get("aws_session_token"),
            )
        return _CLIENTS[options]


def _status(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or str(
        response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


def _os_error(exc: Exception, where: S3Path) -> Exception:
    """What ``Path`` would raise: FileNotFoundError for a missing object; a StoreError for what
    no caller can work around (no bucket, no endpoint, no access)."""
    code = _status(exc)
    if code in ("NoSuchKey", "404", "NotFound"):
        return FileNotFoundError(str(where))
    return StoreError(f"cannot reach {where}: {exc}")


# -- the write lock -------------------------------------------------------------------------------


@dataclass
class S3Lock:
    """A write lock held on S3: who holds it, and whether it has been lost since (the heartbeat
    found it replaced: it expired and another writer took it over)."""

    owner: str
    etag: str
    lost: bool = False


@contextmanager
def s3_write_lock(root: S3Path, lock_name: str) -> Iterator[S3Lock]:
    """Hold the store's write lock on S3 for the block (see the module docstring).

    Raises:
        StoreError: another writer holds a lock that has not expired.
    """
    lock = root / lock_name
    client = lock.client()
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    held = S3Lock(owner, _acquire(client, lock, owner))
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LOCK_HEARTBEAT) and not held.lost:
            try:
                held.etag = _put_lock(client, lock, owner, if_match=held.etag)
            except Exception as exc:  # noqa: BLE001
                if _status(exc) in _CONFLICT:
                    held.lost = True  # replaced: another writer took it over
                # else S3 out of reach for a moment: the next beat tries again, the expiry allows it

    beat = threading.Thread(target=heartbeat, name="clipsearch-s3-lock", daemon=True)
    beat.start()
    try:
        yield held
    finally:
        stop.set()
        beat.join()
        if not held.lost:
            try:
                client.delete_object(Bucket=lock.bucket, Key=lock.key, IfMatch=held.etag)
            except Exception:  # noqa: BLE001 - replaced meanwhile: it is another writer's now
                pass


_CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def _lock_body(owner: str) -> bytes:
    return json.dumps({"owner": owner, "expires": time.time() + LOCK_TTL}).encode()


def _put_lock(client, lock: S3Path, owner: str, *, if_match: str | None = None) -> str:
    cond = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
    got = client.put_object(Bucket=lock.bucket, Key=lock.key, Body=_lock_body(owner), **cond)
    return str(got.get("ETag", ""))


def _if_match(etag: str | None) -> dict[str, str]:
    return {"IfMatch": etag} if etag else {}


def _acquire(client, lock: S3Path, owner: str) -> str:
    for _ in range(3):
        try:
            return _put_lock(client, lock, owner)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) not in _CONFLICT:
                raise StoreError(f"cannot take the write lock of store {lock.parent}: {exc}") from None
        try:
            held = client.get_object(Bucket=lock.bucket, Key=lock.key)
            info = json.loads(held["Body"].read())
            etag = str(held.get("ETag", ""))
        except Exception:  # noqa: BLE001 - released meanwhile (or unreadable): try again
            continue
        if float(info.get("expires", 0)) > time.time():
            raise StoreError(
                f"store {lock.parent} is being written by {info.get('owner', 'another writer')}; "
                "try again when it finishes"
            )
        try:  # expired: its owner died; take it over, if it is still the lock we read
            client.delete_object(Bucket=lock.bucket, Key=lock.key, **_if_match(etag))
        except Exception:  # noqa: BLE001
            continue
    raise StoreError(f"store {lock.parent} is being written by another writer; try again when it finishes")
