"""Errors raised by gsformat readers and writers."""
from __future__ import annotations


class FormatError(ValueError):
    """A record, shard or dataset does not conform to the gsformat spec.

    The message says what was expected, what was found and where (file, shard, sample) when the
    caller knows it; `where` prefixes the message.
    """

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)

    def at(self, where: str) -> "FormatError":
        """The same error, located (`shard.00003.mds, sample 17`)."""
        inner = f"{where}, {self.where}" if self.where else where
        return FormatError(self.reason, inner)


class LegacyCodecWarning(UserWarning):
    """Encoding with a codec that readers decode but writers should not write (SPEC.md § 5)."""


class UnknownCodecError(FormatError):
    """A record names a codec id that is not registered with numcodecs."""
