"""The gateway's admin side: the master-key check for `/admin/v1/...` and the dashboard (`/ui`),
and the admin API that manages keys and reloads the config without restarts.

It is split by concern (each part a module of this package), and every name is importable from
here as before:

- `llmroute.gateway.admin_auth`: the master key and keyless demo mode (`AdminAuth`,
  `check_admin`, `is_loopback`): who may use the admin side (config and use are described there);
- `llmroute.gateway.admin_keys`: the keys and config kept current on every worker (`KeyManager`,
  `merge_keys`): key store, shared counter, polling, SIGHUP, following a reload;
- `llmroute.gateway.admin_api`: the `/admin/v1/...` endpoints (`KeyManager`'s handlers), their
  request bodies (`KeyCreate`, `KeyLimits`), OpenAPI description and the masked config.
"""

from __future__ import annotations

from llmroute.gateway.admin_api import KeyCreate, KeyLimits, admin_openapi, masked_config
from llmroute.gateway.admin_auth import BIND_HOST_ENV, AdminAuth, check_admin, from_loopback_page, is_loopback
from llmroute.gateway.admin_keys import KeyManager, merge_keys

__all__ = [
    "BIND_HOST_ENV",
    "AdminAuth",
    "KeyCreate",
    "KeyLimits",
    "KeyManager",
    "admin_openapi",
    "check_admin",
    "from_loopback_page",
    "is_loopback",
    "masked_config",
    "merge_keys",
]
