"""Where `gsformat convert` reads from: any path or URL a source names.

- local paths and ``file://`` URLs;
- ``s3://`` through MosaicML streaming's storage (boto3), as datasets are written and streamed:
  one S3 client for both, so ``S3_ENDPOINT_URL`` and the AWS variables mean the same everywhere
  (s3fs would bring aiobotocore, whose narrow botocore pins fight the boto3 streaming needs);
- every other fsspec URL (``http(s)://``, ``gs://``, ``hf://``, ``memory://``, …) through fsspec;
- WebDataset's ``pipe:CMD``: CMD's standard output, read as it comes (``pipe:curl -s URL``).

Patterns: ``{a,b}`` and ``{000..009}`` brace lists (zero padding kept), then ``*``/``?``/``[…]``
globs (on remote stores by listing). A location that cannot be read raises ``OSError`` naming it.

Failures are told apart on every store by `failure_kind` (the exception and the causes it
carries: fsspec reports a refused connection as ``FileNotFoundError`` *from* aiohttp's
``ClientConnectorError``): ``missing`` (404, ``NoSuchKey``, ``NoSuchBucket``, no such file),
``denied`` (401, 403), ``unreachable`` (refused, reset, DNS, timeouts, 5xx, 408/429 throttling),
``damaged`` (the bytes themselves: a truncated tar), ``error`` (anything else of I/O).
`with_retries` retries the unreachable ones with backoff; the others fail at once.
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import random
import re
import shlex
import subprocess
import tempfile
import time
import urllib.parse

from ..format import storage

GLOB_CHARS = "*?["
RETRIES = 4            # attempts of an unreachable location before it is given up (this run)
BACKOFF_S = 1.0        # first wait; doubled per attempt (1, 2, 4 s), ±25 % so ranks spread out


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
            failed = OSError(f"{url}: {first} exited with status {status}"
                             + (f" ({error.splitlines()[-1]})" if error else ""))
            failed.gsformat_kind = ERROR  # the command's failure, not what it did to the tar
            raise failed from None
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


MISSING, DENIED, UNREACHABLE, DAMAGED, ERROR = "missing", "denied", "unreachable", "damaged", \
    "error"
KIND_TEXT = {MISSING: "not found", DENIED: "access denied", UNREACHABLE: "unreachable",
             DAMAGED: "damaged", ERROR: "unreadable"}
# by class name (and base class names), so that no store's client is imported to tell them
_UNREACHABLE_NAMES = {
    "ConnectionError", "TimeoutError", "gaierror",        # refused, reset, aborted; DNS
    "ClientConnectionError", "ClientPayloadError",        # aiohttp (fsspec http, gcsfs, …)
    "EndpointConnectionError", "ConnectionClosedError", "ConnectTimeoutError",  # botocore
    "ReadTimeoutError", "IncompleteReadError", "ResponseStreamingError", "ProxyConnectionError",
    "NewConnectionError", "ProtocolError", "RemoteDisconnected", "IncompleteRead",  # urllib3
    "ServiceUnavailable", "TooManyRequests", "InternalServerError", "GatewayTimeout",  # google
    "BadGateway", "RetryError", "MaxRetryError"}
_SECURITY_NAMES = {"ClientSSLError", "SSLError", "SSLCertVerificationError",
                   "ServerFingerprintMismatch"}  # refused for cause: retrying cannot help
_S3_MISSING = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchUpload"}
_S3_DENIED = {"403", "401", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch",
              "AllAccessDisabled", "AccountProblem", "InvalidObjectState"}
_S3_UNREACHABLE = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                   "RequestTimeoutException", "InternalError", "ServiceUnavailable",
                   "RequestLimitExceeded", "BandwidthLimitExceeded", "TooManyRequests"}


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it was raised from or during (``raise … from None`` keeps the latter
    as ``__context__``), outermost first."""
    chain = []
    while exc is not None and exc not in chain and len(chain) < 16:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def _status_kind(status) -> str | None:
    """An HTTP status → a kind (None: says nothing)."""
    if not isinstance(status, int) or status < 400:
        return None
    if status in (404, 410):
        return MISSING
    if status in (401, 403):
        return DENIED
    if status in (408, 425, 429) or status >= 500:
        return UNREACHABLE
    return ERROR


def _one_kind(exc: BaseException) -> str | None:
    """What one exception says by itself (None: nothing definite)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    response = getattr(exc, "response", None)
    if "ClientError" in names and isinstance(response, dict):  # botocore
        code = str(response.get("Error", {}).get("Code", ""))
        if code in _S3_MISSING:
            return MISSING
        if code in _S3_DENIED:
            return DENIED
        if code in _S3_UNREACHABLE:
            return UNREACHABLE
        return _status_kind(response.get("ResponseMetadata", {}).get("HTTPStatusCode")) or ERROR
    if names & _SECURITY_NAMES:
        return ERROR
    if names & _UNREACHABLE_NAMES:
        return UNREACHABLE
    for attr in ("status", "status_code", "code"):  # aiohttp, requests/huggingface_hub, google
        kind = _status_kind(getattr(exc, attr, None))
        if kind:
            return kind
    if response is not None:
        kind = _status_kind(getattr(response, "status_code", None))
        if kind:
            return kind
    if names & {"TarError", "EOFError"} or type(exc).__module__ in ("zlib", "gzip"):
        return DAMAGED  # a tar cut short, a corrupt gzip stream
    return None


def _deciding(exc: BaseException) -> tuple[str | None, BaseException]:
    """(kind, the exception that decides it): one marked with its own ``gsformat_kind`` (a
    failed ``pipe:`` command, whatever its output did to the tar reader), else the innermost
    definite cause, else the innermost OS-level meaning (a ``UnitError`` from a local
    ``FileNotFoundError`` is missing)."""
    chain = causes(exc)
    for cause in chain:
        if getattr(cause, "gsformat_kind", None):
            return cause.gsformat_kind, cause
    for cause in reversed(chain):
        kind = _one_kind(cause)
        if kind:
            return kind, cause
    for cause in reversed(chain):
        if isinstance(cause, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
            return MISSING, cause
        if isinstance(cause, PermissionError):
            return DENIED, cause
        if isinstance(cause, OSError):
            return ERROR, cause
    return None, exc


def failure_kind(exc: BaseException) -> str | None:
    """``missing``, ``denied``, ``unreachable``, ``damaged`` or ``error`` for a failure to read
    a location; None for an exception that is not about reading (a bug: it propagates). The
    innermost definite cause decides (fsspec's ``FileNotFoundError`` from a refused connection
    is unreachable; a ``UnitError`` from a 404 is missing)."""
    return _deciding(exc)[0]


def root_cause(exc: BaseException) -> BaseException:
    """The exception of the chain that decided `failure_kind` (else ``exc``)."""
    return _deciding(exc)[1]


def describe(exc: BaseException) -> str:
    """One line: the failure's kind and its innermost cause, e.g. ``unreachable
    (ClientConnectorError: Cannot connect to host …)`` or ``not found (NoSuchKey)``."""
    kind = failure_kind(exc) or ERROR
    cause = root_cause(exc)
    text = " ".join(str(cause).split())
    response = getattr(cause, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore: the store's own words
        error = response["Error"]
        text = f"{error.get('Code', '')}: {error.get('Message', '')}".strip(": ")
    detail = type(cause).__name__ + (f": {text}" if text and text != type(cause).__name__
                                     else "")
    return f"{KIND_TEXT[kind]} ({detail})"


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the network or the server, not the data (refused, reset,
    DNS, timed out, 5xx, throttled)."""
    return failure_kind(exc) == UNREACHABLE


def attempts_of(exc: BaseException) -> int:
    """How many times `with_retries` tried before giving up on ``exc`` (or a cause of it)."""
    return max((getattr(c, "gsformat_attempts", 1) for c in causes(exc)), default=1)


def with_retries(action, attempts: int | None = None, backoff_s: float | None = None):
    """``action()``, retried on transient failures (`RETRIES` attempts in all, waits doubling
    from `BACKOFF_S`, jittered); the last failure is raised as it is, with the attempts made as
    its ``gsformat_attempts`` (`attempts_of`). A failure already retried below (its cause
    carries the attempts) is not retried again."""
    attempts = RETRIES if attempts is None else attempts
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    for attempt in range(attempts):
        try:
            return action()
        except Exception as exc:
            if attempt + 1 >= attempts or not is_transient(exc) or attempts_of(exc) > 1:
                try:
                    exc.gsformat_attempts = max(attempt + 1, attempts_of(exc))
                except AttributeError:  # an exception type without a __dict__
                    pass
                raise
            time.sleep(backoff_s * 2 ** attempt * random.uniform(0.75, 1.25))
