"""First-run setup for ``make run``: a demo team, its admin, a bridge token, and how to connect a client.

Idempotent: re-running keeps the team, the admin, the generated password and the token (both kept in
``SIGNOFF_STATE_DIR`` with mode 0600), so the printed config stays the same from one run to the next.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandParser

from approvals.models import Membership, Team
from approvals.services.teams import member_add, team_create, user_get_or_create
from approvals.services.tokens import token_authenticate, token_issue, token_revoke
from approvals.snippets import client_configs
from config.env import env_secret, env_str

TEAM_NAME = "Demo"
TEAM_SLUG = "demo"
TOKEN_NAME = "demo"
SERVER_NAME = "time"
PASSWORD_FILE = "admin_password"
TOKEN_FILE = "demo_token"


class Command(BaseCommand):
    help = (
        "Set up the demo (idempotent): team 'demo', an admin (SIGNOFF_ADMIN_EMAIL, SIGNOFF_ADMIN_PASSWORD "
        "or a generated password) and a bridge token; print how to log in and a ready MCP client config."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--quiet", action="store_true", help="Set up, but print no banner.")

    def handle(self, *args: Any, quiet: bool, **options: Any) -> None:
        state_dir = Path(settings.STATE_DIR)
        state_dir.mkdir(parents=True, exist_ok=True)

        team = Team.objects.filter(slug=TEAM_SLUG).first() or team_create(name=TEAM_NAME, slug=TEAM_SLUG)
        email = env_str("SIGNOFF_ADMIN_EMAIL", "admin@example.com")
        password, source = _admin_password(state_dir / PASSWORD_FILE)
        user, password_stale = _ensure_admin(email=email, password=password, source=source)
        if not Membership.objects.filter(team=team, user_id=user.pk, role=Membership.Role.ADMIN).exists():
            member_add(team=team, user=user, role=Membership.Role.ADMIN)
        raw_token = _ensure_token(state_dir / TOKEN_FILE, team=team, user=user)

        if quiet:
            return
        if source == "env":
            password_line = "(from SIGNOFF_ADMIN_PASSWORD, not shown)"
        elif password_stale:
            password_line = (
                f"(changed since it was generated: the one in {state_dir / PASSWORD_FILE} no longer works)"
            )
        else:
            password_line = password
        self.stdout.write(
            _banner(
                public_url=settings.SIGNOFF_PUBLIC_URL,
                email=user.get_username(),
                password_line=password_line,
                token=raw_token,
                token_file=state_dir / TOKEN_FILE,
            )
        )


def _write_secret(path: Path, value: str) -> None:
    """Write a secret file readable by its owner only (mode 0600), replacing it atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_secret(path: Path) -> str:
    """A secret file's value ('' if absent), tightening its mode to 0600 if it was looser."""
    if not path.exists():
        return ""
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return path.read_text().strip()


def _admin_password(path: Path) -> tuple[str, str]:
    """The admin's password and where it came from: ``env``, ``file`` (generated before) or ``new``."""
    from_env = env_secret("SIGNOFF_ADMIN_PASSWORD")
    if from_env:
        return from_env, "env"
    stored = _read_secret(path)
    if stored:
        return stored, "file"
    generated = secrets.token_urlsafe(18)
    _write_secret(path, generated)
    return generated, "new"


def _ensure_admin(*, email: str, password: str, source: str) -> tuple[User, bool]:
    """The demo admin: staff and superuser with a verified address. Returns it and whether the stored
    password is stale (the admin changed it since; a password from a file is never forced back)."""
    from allauth.account.models import EmailAddress

    user_model = get_user_model()
    username = user_model.objects.normalize_email(email).lower()
    existing = user_model.objects.filter(username=username).first()
    keep = source == "file" and existing is not None and existing.has_usable_password()
    user = user_get_or_create(email=email, password=None if keep else password)
    stale = keep and not user.check_password(password)
    if not (user.is_staff and user.is_superuser):
        user.is_staff = user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    address = EmailAddress.objects.filter(user=user, email__iexact=user.email).first()
    if address is None:
        EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    elif not address.verified:
        address.verified = True
        address.save(update_fields=["verified"])
    return user, stale


def _ensure_token(path: Path, *, team: Team, user: User) -> str:
    """The raw demo token: the stored one while it still authenticates for this admin, else a new one."""
    stored = _read_secret(path)
    if stored:
        token = token_authenticate(stored)
        if token is not None and token.team_id == team.pk and token.user_id == user.pk:
            return stored
        if token is not None:  # still valid, but for another admin or team: ours, so retire it
            token_revoke(token=token, by=None, reason="replaced by setup_demo")
    _, raw = token_issue(team=team, user=user, name=TOKEN_NAME)
    _write_secret(path, raw)
    return raw


def _venv_script(name: str) -> str | None:
    """The absolute path of a console script beside this Python, if installed."""
    candidate = Path(sys.executable).absolute().parent / name
    return str(candidate) if candidate.exists() else None


def _banner(*, public_url: str, email: str, password_line: str, token: str, token_file: Path) -> str:
    configs = client_configs(
        public_url=public_url,
        token=token,
        name=SERVER_NAME,
        upstream=[_venv_script("mcp-server-time") or "mcp-server-time"],
        bridge=_venv_script("mcpbridge") or "mcpbridge",
    )
    rule = "=" * 78
    lines = [
        "",
        rule,
        "Signoff is set up.",
        "",
        f"  Log in:    {public_url}/accounts/login/",
        f"  Email:     {email}",
        f"  Password:  {password_line}",
        "",
        f"  Demo bridge token (team '{TEAM_SLUG}', kept in {token_file}):",
        f"    {token}",
        "",
        "Claude Desktop: add this to claude_desktop_config.json, then restart Claude Desktop:",
        "",
        configs.desktop_json,
        "",
        "Claude Code:",
        "",
        "  " + configs.code_line,
        "",
        "Then ask the model for the time: the call waits in the queue until you Allow it in the browser.",
    ]
    if _venv_script("mcp-server-time") is None:
        lines += ["", "(mcp-server-time is not installed here: pip install mcp-server-time)"]
    lines += [rule, ""]
    return "\n".join(lines)
