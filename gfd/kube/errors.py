"""What a Kubernetes API request raises: one typed hierarchy, each error chained to the ApiException or
urllib3/socket error it came from (`__cause__`), with the answer's status and Retry-After kept as data."""

from __future__ import annotations

import email.utils
import time
from typing import Any

# A Retry-After is honoured, but a hostile or broken one (a year, a date in 2100) must not park a loop.
MAX_RETRY_AFTER_S = 600.0


class KubeError(Exception):
    """An API request failed. `status` is the HTTP status (None when no answer came), `reason` the server's
    reason phrase, `retry_after` the seconds its Retry-After header asked for. The message is one line:
    `<status> <reason>` for an answer, `<error type>: <error>` for no answer."""

    def __init__(self, message: str, status: int | None = None, reason: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.retry_after = status, reason, retry_after


class NotFound(KubeError):
    """404: the object (or its kind) does not exist."""


class Conflict(KubeError):
    """409: a stale resourceVersion, or the name already exists: read again and retry."""


class Forbidden(KubeError):
    """401 or 403: the credentials are refused, or RBAC does not grant the request."""


class Gone(KubeError):
    """410: the resourceVersion a watch asked for has been compacted away: list again."""


class TooManyRequests(KubeError):
    """429: the server (API priority and fairness) asks us to wait `retry_after` seconds."""


class ServerError(KubeError):
    """5xx: the server failed; `retry_after` when it said how long to wait (503)."""


class Unreachable(KubeError):
    """No answer: connection refused or reset, a timeout, TLS failure, or the client was cancelled by a stop."""


class CredentialsError(KubeError):
    """No client could be built: no in-cluster service account, or an unreadable kubeconfig."""


_BY_STATUS: dict[int, type[KubeError]] = {401: Forbidden, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone,
                                          429: TooManyRequests}


def from_api_exception(e: Any) -> KubeError:
    """The typed error for a kubernetes ApiException (status 0: the client could not send the request)."""
    status = int(getattr(e, "status", 0) or 0)
    reason = " ".join(str(getattr(e, "reason", "") or "").split())
    if status == 0:
        return Unreachable(reason or type(e).__name__)
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else KubeError)
    return kind(f"{status} {reason}".strip(), status, reason, retry_after(getattr(e, "headers", None)))


def from_transport_error(e: BaseException) -> Unreachable:
    """A urllib3 or socket error (no HTTP answer), as one line."""
    return Unreachable(" ".join(f"{type(e).__name__}: {e}".split())[:300])


def retry_after(headers: Any) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), capped; None when absent or unreadable."""
    try:
        value = headers.get("Retry-After") if headers else None
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        try:
            seconds = email.utils.parsedate_to_datetime(str(value)).timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)
