"""`llmroute keys create|list|revoke|budget|audit|reload`: the admin API (`llmroute.gateway.admin`) of a
running gateway, from the command line.

Examples::

    export LLMROUTE_ADMIN_KEY=...           # the gateway's master key (its admin.key_env)
    llmroute keys create --id team-b --budget-day 5 --rpm 600 --alias 'llmroute/*'
    llmroute keys list [--json]
    llmroute keys budget team-b --day 10 --month none    ('none' removes a limit)
    llmroute keys revoke team-b
    llmroute keys audit --limit 20
    llmroute keys reload                    (re-read the gateway's config file and apply it live)

`--url` is the gateway's root (default `$LLMROUTE_URL`, else http://127.0.0.1:8080);
`--admin-key-env` names the environment variable holding the master key (default
LLMROUTE_ADMIN_KEY; unset: no key is sent, which a gateway in admin demo mode accepts).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
import typer

__all__ = ["AdminClient", "register"]

UrlOpt = Annotated[
    str | None,
    typer.Option("--url", help="Gateway root URL (default: $LLMROUTE_URL, else http://127.0.0.1:8080)."),
]
KeyEnvOpt = Annotated[
    str,
    typer.Option("--admin-key-env", help="Environment variable holding the gateway's master key."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class AdminClient:
    """A small blocking client of one gateway's admin API; errors exit with the gateway's message."""

    def __init__(self, url: str | None, key_env: str) -> None:
        self.url = (url or os.environ.get("LLMROUTE_URL") or "http://127.0.0.1:8080").rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[: -len("/v1")]
        key = os.environ.get(key_env)
        self.headers = {"authorization": f"Bearer {key}"} if key else {}

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        timeout: float = 30,
    ) -> Any:
        """The JSON answer of `method /admin/v1{path}`; prints the error and exits 1 on a failure."""
        import httpx

        try:
            r = httpx.request(
                method,
                f"{self.url}/admin/v1{path}",
                json=body,
                params=params,
                headers=self.headers,
                timeout=timeout,
            )
        except httpx.HTTPError as e:
            typer.echo(
                f"error: cannot reach the gateway at {self.url} ({type(e).__name__}); is it running?",
                err=True,
            )
            raise typer.Exit(1) from None
        try:
            data = r.json()
        except ValueError:
            data = None
        if r.status_code >= 400:
            msg = data["error"]["message"] if isinstance(data, dict) and "error" in data else r.text[:300]
            typer.echo(f"error: {r.status_code}: {msg}", err=True)
            raise typer.Exit(1)
        return data


def _limit(value: str | None, name: str, kind: type) -> tuple[bool, Any]:
    """(given, value) of a limit option: 'none' removes the limit."""
    if value is None:
        return False, None
    if value.strip().lower() in ("none", "off", "null"):
        return True, None
    try:
        return True, kind(value)
    except ValueError:
        typer.echo(f"error: {name}: give a number or 'none' (got {value!r})", err=True)
        raise typer.Exit(2) from None


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def register(keys_app: typer.Typer) -> None:
    """Add the admin-API commands to `llmroute keys`."""

    @keys_app.command("create")
    def create_cmd(
        key_id: Annotated[str | None, typer.Option("--id", help="The key's name (default: random).")] = None,
        budget_day: Annotated[float | None, typer.Option("--budget-day", help="USD per UTC day.")] = None,
        budget_month: Annotated[float | None, typer.Option("--budget-month", help="USD per month.")] = None,
        rpm: Annotated[int | None, typer.Option("--rpm", help="Requests per minute.")] = None,
        alias: Annotated[
            list[str] | None,
            typer.Option("--alias", help="Allowed model/alias (pattern); repeat. Default: all."),
        ] = None,
        url: UrlOpt = None,
        admin_key_env: KeyEnvOpt = "LLMROUTE_ADMIN_KEY",
        as_json: JsonOpt = False,
    ) -> None:
        """Create an API key on a running gateway; its text is printed this once."""
        body: dict[str, Any] = {"id": key_id, "budget_usd_day": budget_day, "budget_usd_month": budget_month}
        body |= {"rpm": rpm, "aliases": alias or None}
        out = AdminClient(url, admin_key_env).call("POST", "/keys", body)
        if as_json:
            _print_json(out)
            return
        typer.echo(f"key (give it to the client; it is shown only now): {out['key']}")
        typer.echo(f"id: {out['id']}")

    @keys_app.command("list")
    def list_cmd(
        url: UrlOpt = None, admin_key_env: KeyEnvOpt = "LLMROUTE_ADMIN_KEY", as_json: JsonOpt = False
    ) -> None:
        """List a running gateway's keys (config file and key store; never a secret)."""
        out = AdminClient(url, admin_key_env).call("GET", "/keys")
        if as_json:
            _print_json(out)
            return
        typer.echo(
            f"{'id':<24} {'source':<7} {'active':<6} {'day $':>9} {'month $':>9} {'rpm':>6} {'spent today':>12}  aliases"
        )
        for k in out["data"]:
            spent = (k.get("usage") or {}).get("day_spent")
            typer.echo(
                f"{k['id']:<24} {k['source']:<7} {'yes' if k['active'] else 'no':<6} "
                f"{_num(k['budget_usd_day']):>9} {_num(k['budget_usd_month']):>9} {_num(k['rpm']):>6} "
                f"{_num(spent):>12}  {','.join(k['aliases']) if k['aliases'] else 'all'}"
            )
        for w in out.get("warnings", []):
            typer.echo(f"warning: {w}", err=True)

    @keys_app.command("revoke")
    def revoke_cmd(
        key_id: Annotated[str, typer.Argument(help="The key's id.")],
        url: UrlOpt = None,
        admin_key_env: KeyEnvOpt = "LLMROUTE_ADMIN_KEY",
    ) -> None:
        """Revoke a key of the key store: refused from the next request on, on every worker."""
        from urllib.parse import quote

        AdminClient(url, admin_key_env).call("DELETE", f"/keys/{quote(key_id, safe='')}")
        typer.echo(f"revoked: {key_id}")

    @keys_app.command("budget")
    def budget_cmd(
        key_id: Annotated[str, typer.Argument(help="The key's id.")],
        day: Annotated[str | None, typer.Option("--day", help="USD per UTC day ('none': no limit).")] = None,
        month: Annotated[
            str | None, typer.Option("--month", help="USD per month ('none': no limit).")
        ] = None,
        rpm: Annotated[
            str | None, typer.Option("--rpm", help="Requests per minute ('none': no limit).")
        ] = None,
        url: UrlOpt = None,
        admin_key_env: KeyEnvOpt = "LLMROUTE_ADMIN_KEY",
        as_json: JsonOpt = False,
    ) -> None:
        """Change a key's budgets or rate limit (only the options given)."""
        from urllib.parse import quote

        body: dict[str, Any] = {}
        for name, value, kind in (
            ("budget_usd_day", day, float),
            ("budget_usd_month", month, float),
            ("rpm", rpm, int),
        ):
            given, v = _limit(value, name, kind)
            if given:
                body[name] = v
        if not body:
            typer.echo("error: give --day, --month and/or --rpm", err=True)
            raise typer.Exit(2)
        out = AdminClient(url, admin_key_env).call("PATCH", f"/keys/{quote(key_id, safe='')}", body)
        if as_json:
            _print_json(out)
            return
        typer.echo(
            f"{out['id']}: day {_num(out['budget_usd_day'])} USD, month {_num(out['budget_usd_month'])} USD, "
            f"rpm {_num(out['rpm'])}"
        )

    @keys_app.command("reload")
    def reload_cmd(
        url: UrlOpt = None, admin_key_env: KeyEnvOpt = "LLMROUTE_ADMIN_KEY", as_json: JsonOpt = False
    ) -> None:
        """Re-read the gateway's config file and apply it without a restart (validated first: a bad
        file leaves the running config; every worker follows)."""
        out = AdminClient(url, admin_key_env).call("POST", "/reload", timeout=300)
        if as_json:
            _print_json(out)
            return
        for line in reload_lines(out):
            typer.echo(line)
        for w in out.get("warnings", []):
            typer.echo(f"warning: {w}", err=True)

    @keys_app.command("audit")
    def audit_cmd(
        limit: Annotated[int, typer.Option("--limit", help="Newest N actions.")] = 50,
        url: UrlOpt = None,
        admin_key_env: KeyEnvOpt = "LLMROUTE_ADMIN_KEY",
        as_json: JsonOpt = False,
    ) -> None:
        """The gateway's admin actions (key changes, config reloads), newest first."""
        out = AdminClient(url, admin_key_env).call("GET", "/audit", params={"limit": limit})
        if as_json:
            _print_json(out)
            return
        for a in out["data"]:
            detail = orjson.dumps(a["detail"]).decode() if a["detail"] else ""
            typer.echo(
                f"{_when(a['ts'])}  {a['action']:<22} {a['target'] or '-':<24} {a['actor']:<5} {detail}"
            )


def reload_lines(out: dict[str, Any]) -> list[str]:
    """`POST /admin/v1/reload`'s answer as lines: what changed, what needs a restart."""
    if out.get("runtime_rebuilt"):
        lines = ["reloaded: new runtime swapped in (requests in flight finish on the old one)"]
    elif "keys" in out.get("sections", []) or "admin" in out.get("sections", []):
        lines = ["reloaded: keys / admin only"]
    else:
        lines = ["reloaded: nothing to change"]
    for what in ("models", "aliases", "routers", "rules"):
        d = out.get(what) or {}
        parts = [
            f"{sign}{n}"
            for sign, k in (("+", "added"), ("-", "removed"), ("~", "changed"))
            for n in d.get(k, [])
        ]
        if parts:
            lines.append(f"{what}: {' '.join(parts)}")
    other = [s for s in out.get("sections", []) if s not in ("keys", "admin")]
    if other:
        lines.append(f"sections: {', '.join(other)}")
    if out.get("restart_required"):
        lines.append(f"restart required (the running value stays): {', '.join(out['restart_required'])}")
    return lines


def _num(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:g}" if isinstance(v, float) else str(v)
