"""What kind of failure reading a location was, on every store, and retrying the ones worth it.

`failure_kind` reads an exception and the causes it carries (fsspec reports a refused connection
as ``FileNotFoundError`` *from* aiohttp's ``ClientConnectorError``): ``missing`` (404,
``NoSuchKey``, ``NoSuchBucket``, no such file), ``denied`` (401, 403), ``unreachable`` (refused,
reset, DNS, timeouts, 5xx, 408/429 throttling), ``damaged`` (the bytes themselves: a truncated
tar), ``error`` (anything else of I/O; a failed ``pipe:`` command, whose exit status says nothing
of why). `with_retries` retries the unreachable ones with backoff; the others fail at once.
"""
from __future__ import annotations

import random
import time

RETRIES = 4            # attempts of an unreachable location before it is given up (this run)
BACKOFF_S = 1.0        # first wait; doubled per attempt (1, 2, 4 s), ±25 % so ranks spread out

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
_DENIED_NAMES = {"NoCredentialsError", "PartialCredentialsError",  # botocore: no keys at all
                 "CredentialRetrievalError", "DefaultCredentialsError",  # google-auth
                 "ClientAuthenticationError"}                       # azure
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
    if names & _DENIED_NAMES:
        return DENIED
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
