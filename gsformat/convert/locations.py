"""Where `gsformat convert` reads from: any path or URL a source names.

- local paths and ``file://`` URLs;
- ``s3://`` through MosaicML streaming's storage (boto3), as datasets are written and streamed:
  one S3 client for both, so ``S3_ENDPOINT_URL`` and the AWS variables mean the same everywhere
  (s3fs would bring aiobotocore, whose narrow botocore pins fight the boto3 streaming needs);
- every other fsspec URL (``http(s)://``, ``gs://``, ``hf://``, ``memory://``, …) through fsspec;
- WebDataset's ``pipe:CMD``: CMD's standard output, read as it comes (``pipe:curl -s URL``).

Patterns: ``{a,b}`` and ``{000..009}`` brace lists (zero padding kept), then ``*``/``?``/``[…]``
globs (on remote stores by listing). A location that cannot be read raises ``OSError`` naming it;
`with_retries` retries the transient ones (connection refused or reset, timeouts) with backoff.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shlex
import subprocess
import tempfile
import time
import urllib.parse

from ..format import storage

GLOB_CHARS = "*?["
RETRIES = 3            # attempts of a transient failure before a unit is given up (this run)
BACKOFF_S = 0.5        # first wait; doubled per attempt


def scheme_of(url: str) -> str:
    """"" for a local path, else the URL scheme (``pipe`` for WebDataset's ``pipe:``)."""
    if url.startswith("pipe:"):
        return "pipe"
    scheme = urllib.parse.urlparse(url).scheme
    return scheme if len(scheme) > 1 else ""  # one letter: a Windows drive


def local_path(url: str) -> str:
    """``file:///a/b`` → ``/a/b``; other locations unchanged."""
    return urllib.parse.urlparse(url).path if url.startswith("file://") else url


def expand_braces(pattern: str) -> list[str]:
    """``shards/{00000..00002}.tar`` → three names (zero padding kept); ``{a,b}`` lists too."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    body, head, tail = match.group(1), pattern[:match.start()], pattern[match.end():]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        lo, hi = span.group(1), span.group(2)
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [name for option in options for name in expand_braces(head + option + tail)]


def _fs(url: str):
    import fsspec
    return fsspec.core.url_to_fs(url)


def expand(pattern: str) -> list[str]:
    """A pattern → the locations it names, sorted per glob (a name without glob characters is
    returned as it is, present or not)."""
    out = []
    for name in expand_braces(local_path(pattern)):
        kind = scheme_of(name)
        if kind == "pipe" or not any(c in name for c in GLOB_CHARS):
            out.append(name)
        elif kind == "":
            import glob
            out.extend(sorted(glob.glob(name)))
        elif kind == "s3":  # list the part before the first glob character, then match
            base = name[:min(name.find(c) for c in GLOB_CHARS if c in name)].rsplit("/", 1)[0]
            out.extend(f"{base}/{rel}" for rel in list_files(base)
                       if fnmatch.fnmatchcase(f"{base}/{rel}", name))
        else:
            fs, path = _fs(name)
            protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
            out.extend(sorted(found if "://" in found else f"{protocol}://{found}"
                              for found in fs.glob(path)))
    return out


def list_files(root: str) -> list[str]:
    """Every file below ``root`` as a path relative to it (sorted); [] when there is none."""
    root = local_path(root).rstrip("/")
    kind = scheme_of(root)
    if kind in ("", "s3"):
        return storage.list_files(root) if kind or os.path.isdir(root) else []
    fs, path = _fs(root)
    path = path.rstrip("/")
    try:
        found = fs.find(path)
    except FileNotFoundError:
        return []
    return sorted(f[len(path) + 1:] for f in found if f.startswith(path + "/"))


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """A whole (small) file: FileNotFoundError when absent, ValueError over ``max_bytes``."""
    url = local_path(url)
    if scheme_of(url) in ("", "s3"):
        return storage.read_bytes(url, max_bytes)
    with open_stream(url) as f:
        data = f.read(max_bytes + 1) if max_bytes is not None else f.read()
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"{url}: more than {max_bytes} bytes")
    return data


@contextlib.contextmanager
def open_stream(url: str):
    """A binary file object reading ``url`` front to back without holding it in memory (an S3
    object is downloaded to a temporary file first: streaming's storage has no ranged reads)."""
    url = local_path(url)
    kind = scheme_of(url)
    if kind == "":
        with open(url, "rb") as f:
            yield f
    elif kind == "pipe":
        command = url[len("pipe:"):]
        process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE)
        failure = None
        try:
            yield process.stdout
            process.stdout.read()  # drain, so the command can finish
        except Exception as exc:  # a truncated tar: the command's own failure says why
            failure = exc
        finally:
            process.stdout.close()
            error = process.stderr.read().decode("utf-8", "replace").strip()
            status = process.wait()
        if status != 0:
            first = shlex.split(command)[0] if command.strip() else command
            raise OSError(f"{url}: {first} exited with status {status}"
                          + (f" ({error.splitlines()[-1]})" if error else "")) from None
        if failure is not None:
            raise failure
    elif kind == "s3":
        with tempfile.TemporaryDirectory(prefix="gsformat-src-") as tmp:
            local = os.path.join(tmp, "object")
            storage.download(url, local)
            with open(local, "rb") as f:
                yield f
    else:
        import fsspec
        with fsspec.open(url, "rb") as f:
            yield f


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the network, not the data (refused, reset, timed out)."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "TimeoutError", "EndpointConnectionError",
                         "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                         "ServerDisconnectedError", "ClientPayloadError", "ClientOSError"})


def with_retries(action, attempts: int = RETRIES, backoff_s: float = BACKOFF_S):
    """``action()``, retried on transient failures (``attempts`` in all, waits doubling from
    ``backoff_s``); the last failure is raised as it is."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc):
                raise
            time.sleep(backoff_s * 2 ** attempt)
