"""Local paths and object-store URLs (``s3://``, ``gs://``, … through MosaicML streaming).

Remote I/O goes through streaming's own `CloudDownloader` / `CloudUploader`, so whatever storage
a `StreamingDataset` reaches (``S3_ENDPOINT_URL`` included), gsformat reaches too.
"""
from __future__ import annotations

import os
import posixpath
import shutil
import tempfile
import urllib.parse

from .errors import FormatError


def is_remote(path: str) -> bool:
    scheme = urllib.parse.urlparse(str(path)).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts) if is_remote(base) else os.path.join(base, *parts)


def member(root: str, name: str) -> str:
    """``root``/``name`` for a name already checked by `mds.check_basename`; for a local
    dataset also resolved, so that a symlink cannot lead a reader out of it."""
    path = join(root, name)
    if not is_remote(root):
        real_root = os.path.realpath(root)
        real = os.path.realpath(path)
        if os.path.commonpath([real_root, real]) != real_root:
            raise FormatError(f"{name!r} resolves outside the dataset (to {real})")
    return path


def read_bytes(path: str, max_bytes: int | None = None) -> bytes:
    """A whole file; FileNotFoundError if it does not exist, ValueError if over ``max_bytes``."""
    if not is_remote(path):
        size = os.path.getsize(path)
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"{path}: {size} bytes exceeds limit {max_bytes}")
        with open(path, "rb") as f:
            return f.read()
    with tempfile.TemporaryDirectory(prefix="gsformat-") as tmp:
        local = os.path.join(tmp, posixpath.basename(urllib.parse.urlparse(path).path) or "file")
        download(path, local)
        return read_bytes(local, max_bytes)


S3_MISSING = ("404", "NoSuchKey", "NoSuchBucket", "NotFound")
S3_DENIED = ("403", "AccessDenied", "AllAccessDisabled")


def download(remote: str, local: str, timeout: float = 120) -> None:
    """Copy a remote object to a local file: FileNotFoundError when the object or its bucket is
    missing, PermissionError when access is denied; anything else (a server that is down,
    throttling) raised as the client raised it, for the caller to tell apart and retry."""
    from streaming.base.storage.download import CloudDownloader
    try:
        CloudDownloader.direct_download(remote, local, timeout)
    except FileNotFoundError:
        raise
    except Exception as exc:  # boto & co. say "404" in many ways
        response = getattr(exc, "response", None)
        code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) \
            else ""
        if code in S3_MISSING:  # (streaming rewrites a 403's message to "not found" too)
            raise FileNotFoundError(f"{remote}: not found ({code})") from None
        if code in S3_DENIED:
            raise PermissionError(f"{remote}: access denied ({code})") from None
        text = str(exc).lower()
        if not code and any(s in text for s in ("404", "not found", "nosuchkey",
                                                "does not exist")):
            raise FileNotFoundError(f"{remote}: not found") from None
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically (local: temp file + rename; remote: upload)."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    from streaming.base.storage.upload import CloudUploader
    remote_dir, basename = posixpath.split(path)
    tmp = tempfile.mkdtemp(prefix="gsformat-up-")
    try:
        with open(os.path.join(tmp, basename), "wb") as f:
            f.write(data)
        CloudUploader.get((tmp, remote_dir), keep_local=True, exist_ok=True).upload_file(basename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def list_files(root: str) -> list[str]:
    """Every file below ``root`` as a path relative to it (sorted)."""
    if not is_remote(root):
        found = []
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
        return sorted(found)
    from streaming.base.storage.upload import CloudUploader
    with tempfile.TemporaryDirectory(prefix="gsformat-ls-") as scratch:  # the uploader's local
        uploader = CloudUploader.get((scratch, root), keep_local=True, exist_ok=True)  # side
        names = uploader.list_objects("") or []  # it prepends the remote's own path
    prefix = urllib.parse.urlparse(root).path.lstrip("/").rstrip("/")
    return sorted(n[len(prefix) + 1:] if n.startswith(prefix + "/") else n for n in names)
