"""Google Cloud access tokens for `provider: vertex` (Vertex AI's OpenAI-compatible endpoint).

Optional: needs `google-auth` (`pip install 'llmroute[vertex]'`). The credentials are Google's
Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS` naming a service-account key
file, `gcloud auth application-default login`, or the metadata server on Google Cloud) with the
`cloud-platform` scope; the access token goes upstream as `Authorization: Bearer <token>` and is
refreshed (off the event loop, one refresh at a time) when google-auth says it is no longer valid,
which it does a few minutes before it expires.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llmroute.gateway.backends.base import BackendError

__all__ = ["SCOPE", "GoogleToken"]

#: the OAuth scope Vertex AI's prediction endpoints take
SCOPE = "https://www.googleapis.com/auth/cloud-platform"


class GoogleToken:
    """The current access token of the Application Default Credentials (see the module docstring)."""

    def __init__(self, model: str) -> None:
        try:
            import google.auth  # noqa: F401
        except ImportError:
            raise ImportError(
                f"model {model!r}: provider 'vertex' needs google-auth; install it with "
                "pip install 'llmroute[vertex]'"
            ) from None
        self.model = model
        self.credentials: Any = None
        self._lock = asyncio.Lock()

    def _refresh(self) -> str:
        """Load the credentials (first call) and refresh them; blocking (network)."""
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError, GoogleAuthError
        from google.auth.transport.requests import Request

        try:
            if self.credentials is None:
                self.credentials, _ = google.auth.default(scopes=[SCOPE])
            self.credentials.refresh(Request())
        except DefaultCredentialsError:
            raise BackendError(
                f"model {self.model!r} has no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS to "
                "a service-account key file (or run `gcloud auth application-default login`, or run "
                "on Google Cloud) and restart the gateway",
                status=501,
                retryable=False,
                code="missing_credentials",
                etype="backend_unavailable",
            ) from None
        except GoogleAuthError as e:  # the token endpoint refused or failed: another try may work
            raise BackendError(
                f"model {self.model!r}: Google credentials could not be refreshed ({type(e).__name__})"
            ) from None
        return str(self.credentials.token)

    async def header(self) -> str:
        """`Bearer <token>`, refreshed first when the token is missing or about to expire."""
        c = self.credentials
        if c is not None and c.valid:
            return f"Bearer {c.token}"
        async with self._lock:  # one refresh for all the requests waiting on it
            c = self.credentials
            if c is not None and c.valid:
                return f"Bearer {c.token}"
            token = await asyncio.get_running_loop().run_in_executor(None, self._refresh)
        return f"Bearer {token}"
