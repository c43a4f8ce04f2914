"""How to reach Prometheus, with the settings users know from KEDA's Prometheus scaler.

``url``; a bearer token given as a value (read from a Secret by the kube layer) or as a file
(re-read at every query, so a rotated projected token is picked up); a CA bundle, or an explicit
``insecure_skip_verify``; extra headers such as ``X-Scope-OrgID`` for Cortex, Mimir or Thanos
tenants; a timeout. One query is one short-lived ``requests`` session driven by
prometheus-api-client, so that concurrent reads share nothing.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import (
    ConnectTimeoutError,
    InsecureRequestWarning,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.util.retry import Retry

from connbalance.ports import MetricsHttpError, MetricsUnreachable

log = logging.getLogger(__name__)

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")


@dataclass(frozen=True, slots=True)
class Connection:
    url: str
    bearer_token: str | None = None
    bearer_token_file: str | None = None
    ca_file: str | None = None
    insecure_skip_verify: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    timeout_seconds: float = 10.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Prometheus URL {self.url!r} must be http:// or https://host[:port]")
        if self.bearer_token is not None and self.bearer_token_file is not None:
            raise ValueError("give a bearer token or a bearer token file, not both")
        if self.insecure_skip_verify and self.ca_file:
            raise ValueError("insecure-skip-verify cannot be combined with a CA bundle")
        if not self.timeout_seconds > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout_seconds!r}")
        for name, value in self.headers:
            if not _HEADER_NAME.match(name) or "\n" in value or "\r" in value:
                raise ValueError(f"header {name!r} is not a valid HTTP header")
        if self.bearer_token_file is not None:
            self.token()  # fail now, with the path, rather than at the first tick
        if self.ca_file is not None:
            try:
                with open(self.ca_file, "rb"):
                    pass
            except OSError as e:
                raise ValueError(f"cannot read the CA bundle {self.ca_file}: {e.strerror}") from e
        if self.insecure_skip_verify:
            # Chosen explicitly: say so once here, not in a warning at every query.
            log.warning("TLS verification of %s is disabled (insecure-skip-verify)", self.url)
            warnings.filterwarnings("ignore", category=InsecureRequestWarning)

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    def token(self) -> str | None:
        if self.bearer_token_file is None:
            return self.bearer_token
        try:
            with open(self.bearer_token_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            raise ValueError(
                f"cannot read the bearer token file {self.bearer_token_file}: {e.strerror}"
            ) from e

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def query(self, promql: str) -> Any:
        """The ``data.result`` of an instant query; MetricsUnreachable or MetricsHttpError."""
        try:
            headers = self.request_headers()
        except ValueError as e:
            raise MetricsUnreachable(f"Prometheus {self.base_url}: {e}") from e
        answers: list[requests.Response] = []
        with requests.Session() as session:
            session.verify = self.ca_file or not self.insecure_skip_verify
            session.hooks["response"].append(lambda r, *_, **__: answers.append(r))
            client = PrometheusConnect(
                url=self.base_url,
                headers=headers,
                session=session,
                # The controller re-reads on its next tick: retrying here only delays the
                # condition that tells a person Prometheus is down.
                retry=Retry(total=0, raise_on_status=False),
                timeout=self.timeout_seconds,
            )
            try:
                return client.custom_query(promql)
            except (requests.JSONDecodeError, RecursionError) as e:
                # Before RequestException, which requests' JSONDecodeError also is: Prometheus
                # answered, with something else than JSON.
                raise MetricsHttpError(
                    f"Prometheus {self.base_url} answered with something that is not a "
                    f"Prometheus API response: {_body(answers)}"
                ) from e
            except requests.RequestException as e:
                if _timed_out(e):
                    raise MetricsUnreachable(
                        f"Prometheus {self.base_url} did not answer within "
                        f"{self.timeout_seconds:g}s"
                    ) from e
                raise MetricsUnreachable(
                    f"Prometheus {self.base_url} is unreachable: {_cause(e)}"
                ) from e
            except PrometheusApiClientException as e:
                raise MetricsHttpError(_http_message(self.base_url, answers, e)) from e
            except (ValueError, KeyError, TypeError) as e:
                raise MetricsHttpError(
                    f"Prometheus {self.base_url} answered with something that is not a "
                    f"Prometheus API response: {_body(answers)}"
                ) from e


def _chain(error: BaseException) -> list[BaseException]:
    """requests wraps urllib3's MaxRetryError, which wraps the reason, which wraps the OSError."""
    chain = [error]
    while len(chain) < 10:
        seen = chain[-1]
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        nested = nested or getattr(seen, "reason", None)
        if not isinstance(nested, BaseException) or nested in chain:
            break
        chain.append(nested)
    return chain


def _timed_out(error: BaseException) -> bool:
    # With retries off, a read timeout arrives as a ConnectionError, not as requests.Timeout;
    # and urllib3's NewConnectionError (refused) derives from its ConnectTimeoutError.
    return any(
        isinstance(e, requests.Timeout | TimeoutError | ReadTimeoutError)
        or (isinstance(e, ConnectTimeoutError) and not isinstance(e, NewConnectionError))
        for e in _chain(error)
    )


def _cause(error: BaseException) -> str:
    """The innermost reason (connection refused, certificate verify failed), not urllib3's chain."""
    seen = _chain(error)[-1]
    text = str(seen)
    # urllib3 prefixes "<urllib3.connection.HTTPConnection object at 0x...>: "; keep the reason.
    text = re.sub(r"^<[^>]+>: ", "", text)
    return text.splitlines()[0] if text else type(seen).__name__


def _http_message(url: str, answers: list[requests.Response], error: Exception) -> str:
    if not answers:
        return f"Prometheus {url} answered with an HTTP error: {error}"
    answer = answers[-1]
    return f"Prometheus {url} answered HTTP {answer.status_code}: {_body(answers)}"


def _body(answers: list[requests.Response]) -> str:
    if not answers:
        return "(no answer)"
    answer = answers[-1]
    try:
        data = answer.json()
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, Mapping) and "error" in data:
        return f"{data.get('errorType', 'error')}: {data['error']}"[:200]
    text = " ".join(answer.text.split())
    return text[:200] or answer.reason or "(empty body)"
