"""Every location gsformat reads or writes: local paths, ``file://`` URLs, object stores and any
fsspec URL — one module for datasets (`io.dataset_files`, `io.validate`, the loaders) and for
`gsformat convert`'s sources.

- local paths and ``file://`` URLs;
- ``s3://`` (and any store fsspec cannot open here, e.g. ``gs://`` without gcsfs) through
  MosaicML streaming's own `CloudDownloader` / `CloudUploader`, as datasets are written and
  streamed: one S3 client for both, so ``S3_ENDPOINT_URL`` and the AWS variables mean the same
  everywhere (s3fs would bring aiobotocore, whose narrow botocore pins fight streaming's boto3);
- every other fsspec URL (``http(s)://``, ``gs://`` with gcsfs, ``hf://``, ``memory://``, …)
  through fsspec (reading and listing; writing goes through streaming's uploader);
- WebDataset's ``pipe:CMD``: CMD's standard output, read as it comes (``pipe:curl -s URL``).

Patterns (`expand`): ``{a,b}`` and ``{000..009}`` brace lists (zero padding kept), then
``*``/``?``/``[…]`` globs (on remote stores by listing). A location that is not there raises
``FileNotFoundError`` naming it; `failures.failure_kind` tells every other failure apart.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tempfile
import urllib.parse

from ..core.errors import FormatError
from .failures import ERROR, MISSING, failure_kind

GLOB_CHARS = "*?["


def scheme_of(url: str) -> str:
    """"" for a local path, else the URL scheme (``pipe`` for WebDataset's ``pipe:``)."""
    if str(url).startswith("pipe:"):
        return "pipe"
    scheme = urllib.parse.urlparse(str(url)).scheme
    return scheme if len(scheme) > 1 else ""  # one letter: a Windows drive


def is_remote(path: str) -> bool:
    return scheme_of(path) not in ("", "file")


def local_path(url: str) -> str:
    """``file:///a/b`` → ``/a/b``; other locations unchanged."""
    return urllib.parse.urlparse(url).path if str(url).startswith("file://") else url


def _via_streaming(url: str) -> bool:
    """S3, and the stores fsspec has no implementation of here, go through streaming."""
    kind = scheme_of(url)
    if kind == "s3":
        return True
    import fsspec
    try:
        fsspec.get_filesystem_class(kind)
    except (ImportError, ValueError):
        return True
    return False


def _fs(url: str):
    import fsspec
    return fsspec.core.url_to_fs(url)


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
        elif _via_streaming(name):  # list the part before the first glob character, match
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
    if kind == "":
        return _list_local(root) if os.path.isdir(root) else []
    if _via_streaming(root):
        return _list_streaming(root)
    fs, path = _fs(root)
    path = path.rstrip("/")
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    # fsspec's walk over HTML listings takes a server that is down for an empty folder
    errors = {"on_error": "raise"} if set(protocols) & {"http", "https"} else {}
    try:
        found = fs.find(path, **errors)
    except FileNotFoundError as exc:
        if failure_kind(exc) != MISSING:  # fsspec's "not found" for a server that is down
            raise
        return []
    return sorted(f[len(path) + 1:] for f in found if f.startswith(path + "/"))


def read_bytes(url: str, max_bytes: int | None = None) -> bytes:
    """A whole (small) file: FileNotFoundError when absent, ValueError over ``max_bytes``."""
    url = local_path(url)
    if scheme_of(url) == "":
        size = os.path.getsize(url)
        if max_bytes is not None and size > max_bytes:
            raise ValueError(f"{url}: {size} bytes exceeds limit {max_bytes}")
        with open(url, "rb") as f:
            return f.read()
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
            failed = OSError(f"{url}: {first} exited with status {status}"
                             + (f" ({error.splitlines()[-1]})" if error else ""))
            failed.gsformat_kind = ERROR  # the command's failure, not what it did to the tar
            raise failed from None
        if failure is not None:
            raise failure
    elif _via_streaming(url):
        with tempfile.TemporaryDirectory(prefix="gsformat-src-") as tmp:
            local = os.path.join(tmp, "object")
            download(url, local)
            with open(local, "rb") as f:
                yield f
    else:
        import fsspec
        with fsspec.open(url, "rb") as f:
            yield f


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




def _list_local(root: str) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def _list_streaming(root: str) -> list[str]:
    from streaming.base.storage.upload import CloudUploader
    with tempfile.TemporaryDirectory(prefix="gsformat-ls-") as scratch:  # the uploader's local
        uploader = CloudUploader.get((scratch, root), keep_local=True, exist_ok=True)  # side
        names = uploader.list_objects("") or []  # it prepends the remote's own path
    prefix = urllib.parse.urlparse(root).path.lstrip("/").rstrip("/")
    return sorted(n[len(prefix) + 1:] if n.startswith(prefix + "/") else n for n in names)
