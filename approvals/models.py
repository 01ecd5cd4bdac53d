"""Signoff's data: teams and their members, bridge tokens, held tool calls, rules and audit events.

Models hold data and invariants; every state change goes through ``approvals.services``.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from typing import ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone


def new_rules_version() -> int:
    """A random version stamp: unlike a counter it never comes back after a rolled-back change."""
    return secrets.randbits(62)


def team_default_deadline() -> int:
    """A new team's deadline for held calls, however it is created (service, admin, shell)."""
    return int(settings.SIGNOFF_DEFAULT_DEADLINE_SECONDS)


class Team(models.Model):
    """A group of people sharing bridges, rules and one review queue."""

    class Mode(models.TextChoices):
        REVIEW = "review", "Review: a human decides when no rule matches"
        WHITELIST = "whitelist", "Whitelist only: no matching rule means denied"

    class ResultAction(models.TextChoices):
        PASS = "pass", "Pass: the model reads the result; the findings are recorded"
        MASK = "mask", "Mask: the findings are replaced in the result, and the model is told"
        BLOCK = "block", "Block: the model gets an error instead of the result"
        HOLD = "hold", "Hold: a reviewer reads the result first, and releases, masks or blocks it"

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60, unique=True)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.REVIEW)
    default_deadline_seconds = models.PositiveIntegerField(
        default=team_default_deadline,
        help_text="How long a held call waits for a decision before it expires (denied).",
    )
    rules_version = models.PositiveBigIntegerField(
        default=new_rules_version,
        help_text="A fresh random value on every rule change: web processes rebuild their compiled rules.",
    )
    rules_admins_only = models.BooleanField(
        default=False, help_text="Only team admins may create rules (Always-Allow included)."
    )
    four_eyes = models.BooleanField(
        default=False, help_text="Nobody may approve a call made with their own token."
    )
    require_mfa = models.BooleanField(
        default=False,
        help_text="Reviewers and admins must use two-factor authentication to review or administer.",
    )
    alert_calls_per_token_hour = models.PositiveIntegerField(
        default=300,
        help_text="Alert the admins when one token makes more calls than this in an hour (0: off).",
    )
    alert_denials_per_10_minutes = models.PositiveIntegerField(
        default=20,
        help_text="Alert the admins when more calls than this are denied within 10 minutes (0: off).",
    )
    payload_retention_days = models.PositiveIntegerField(
        default=90,
        help_text="Clear call arguments and results after this many days (0: keep). The audit chain stays.",
    )
    result_instructions = models.CharField(
        max_length=8,
        choices=ResultAction.choices,
        default=ResultAction.MASK,
        help_text="What happens to a result holding instructions aimed at the model or hidden text.",
    )
    result_secrets = models.CharField(
        max_length=8,
        choices=ResultAction.choices,
        default=ResultAction.MASK,
        help_text="What happens to a result holding secrets (API keys, tokens, private keys, passwords).",
    )
    result_personal_data = models.CharField(
        max_length=8,
        choices=ResultAction.choices,
        default=ResultAction.PASS,
        help_text="What happens to a result holding personal data (emails, phone and card numbers).",
    )
    require_reviewed_servers = models.BooleanField(
        default=False,
        help_text="Bridges may front only servers whose security checklist an admin approved.",
    )
    allowed_networks = models.JSONField(
        default=list,
        blank=True,
        help_text="Client address ranges (CIDR) the team's bridges may connect from; empty means any.",
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return self.name

    def result_policy(self) -> dict[str, str]:
        """What the team's bridges do with a result's findings, by finding kind (mcpbridge.inspection)."""
        return {
            "instruction": self.result_instructions,
            "hidden_text": self.result_instructions,
            "secret": self.result_secrets,
            "pii": self.result_personal_data,
        }


class Membership(models.Model):
    """A user's role in a team. A user may belong to several teams."""

    class Role(models.TextChoices):
        ADMIN = "admin", "Admin"
        REVIEWER = "reviewer", "Reviewer"
        MEMBER = "member", "Member"
        AUDITOR = "auditor", "Auditor"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "user"], name="one_membership_per_team")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} as {self.role}"


class BridgeToken(models.Model):
    """A person's credential for one or more bridges. Only a hash of the secret is stored."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="bridge_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, help_text="Visible start of the token, for lookup.")
    secret_hash = models.CharField(max_length=64, help_text="SHA-256 of the whole token.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    servers = models.JSONField(
        default=list,
        blank=True,
        help_text="Server names (or globs) the token may front; empty means any server.",
    )
    seen_addresses = models.JSONField(
        default=list, blank=True, help_text="Client addresses this token connected from (the latest few)."
    )
    allowed_networks = models.JSONField(
        default=list,
        blank=True,
        help_text="Client address ranges (CIDR) this token may connect from; empty means the team's.",
    )

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_usable(self, *, now: datetime | None = None) -> bool:
        """Not revoked and not past its expiry."""
        now = now or timezone.now()
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class Invitation(models.Model):
    """An emailed, single-use link that makes its holder a member of a team. Only a hash is stored."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Membership.Role.choices)
    secret_hash = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the link's secret.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.email} to {self.team} as {self.role}"

    def is_open(self, *, now: datetime | None = None) -> bool:
        """Not accepted, not revoked and not past its expiry."""
        now = now or timezone.now()
        return self.accepted_at is None and self.revoked_at is None and self.expires_at > now


class Rule(models.Model):
    """Allow or deny calls to a server's tool without asking a human. Deny beats allow."""

    class Effect(models.TextChoices):
        ALLOW = "allow", "Allow"
        DENY = "deny", "Deny"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="rules")
    effect = models.CharField(max_length=8, choices=Effect.choices)
    server = models.CharField(max_length=128, help_text="Server name as the bridge's --name, or * for any.")
    tool = models.CharField(max_length=128, help_text="Tool name, or * for any.")
    constraints = models.JSONField(
        default=list,
        blank=True,
        help_text="Argument constraints, all of which must hold for the rule to match (see docs/policy.md).",
    )
    note = models.CharField(max_length=500, blank=True)
    # What an allowed call's bridge does with its result's findings, by kind; empty: the team's setting.
    result_instructions = models.CharField(
        max_length=8,
        choices=Team.ResultAction.choices,
        blank=True,
        help_text="Overrides the team's action on instructions and hidden text in results it allows.",
    )
    result_secrets = models.CharField(
        max_length=8,
        choices=Team.ResultAction.choices,
        blank=True,
        help_text="Overrides the team's action on secrets in results of calls it allows.",
    )
    result_personal_data = models.CharField(
        max_length=8,
        choices=Team.ResultAction.choices,
        blank=True,
        help_text="Overrides the team's action on personal data in results of calls it allows.",
    )
    enabled = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True, help_text="The rule stops matching after this.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_from_call = models.ForeignKey(
        "ToolCall", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.effect} {self.server}/{self.tool}"

    RESULT_FIELDS: ClassVar[dict[str, tuple[str, ...]]] = {
        "result_instructions": ("instruction", "hidden_text"),
        "result_secrets": ("secret",),
        "result_personal_data": ("pii",),
    }
    """The result-policy fields a rule may override, and the finding kinds each decides (as the team's)."""

    def result_policy_over(self, team_policy: dict[str, str]) -> dict[str, str]:
        """The result policy of the calls this rule allows: the team's (``Team.result_policy``), with this
        rule's own action for each kind whose field it sets; a blank field keeps the team's action."""
        merged = dict(team_policy)
        for field, kinds in self.RESULT_FIELDS.items():
            action = getattr(self, field)
            if action:
                merged.update(dict.fromkeys(kinds, action))
        return merged


class ToolPin(models.Model):
    """A tool's definition as a team first saw it (trust on first use), and any later change.

    A call to a tool whose current definition differs from the approved one is held for a human even
    where an allow rule matches (rug-pull defence), until a reviewer accepts the new definition.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="tool_pins")
    server = models.CharField(max_length=128)
    tool = models.CharField(max_length=128)
    approved_hash = models.CharField(max_length=64)
    approved_definition = models.JSONField(default=dict)
    current_hash = models.CharField(max_length=64)
    current_definition = models.JSONField(default=dict)
    first_seen_at = models.DateTimeField(default=timezone.now)
    changed_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    approved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "server", "tool"], name="one_pin_per_team_tool")
        ]

    def __str__(self) -> str:
        return f"{self.server}/{self.tool}"

    @property
    def changed(self) -> bool:
        return self.current_hash != self.approved_hash


class ToolCall(models.Model):
    """One ``tools/call`` from a bridge, from arrival to its result. See DESIGN §3 for the states."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        ALLOWED = "allowed", "Allowed"
        DENIED = "denied", "Denied"
        EXPIRED = "expired", "Expired"
        CANCELLED = "cancelled", "Cancelled"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"

    class DecidedVia(models.TextChoices):
        RULE = "rule", "Rule"
        HUMAN = "human", "Reviewer"
        SYSTEM = "system", "Signoff"

    class ResultReview(models.TextChoices):
        HELD = "held", "Held for review"
        RELEASED = "released", "Released"
        MASKED = "masked", "Released masked"
        BLOCKED = "blocked", "Blocked"
        EXPIRED = "expired", "Expired (blocked)"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="calls")
    token = models.ForeignKey(BridgeToken, on_delete=models.PROTECT, related_name="calls")
    requester = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    server = models.CharField(max_length=128)
    tool = models.CharField(max_length=128)
    arguments = models.JSONField(default=dict)
    arguments_hash = models.CharField(max_length=64)
    tool_hash = models.CharField(max_length=64, blank=True)
    state = models.CharField(max_length=16, choices=State.choices)
    reason = models.CharField(max_length=1000, blank=True)
    deadline = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_via = models.CharField(max_length=8, choices=DecidedVia.choices, blank=True)
    rule = models.ForeignKey(Rule, null=True, blank=True, on_delete=models.SET_NULL, related_name="calls")
    risks = models.JSONField(
        default=list,
        blank=True,
        help_text="Warnings for the reviewer: guard findings, a changed tool definition.",
    )
    started_at = models.DateTimeField(null=True, blank=True, help_text="When a bridge claimed it to run.")
    finished_at = models.DateTimeField(null=True, blank=True)
    result_summary = models.CharField(max_length=2000, blank=True)
    result_action = models.CharField(
        max_length=8,
        blank=True,
        help_text="What the bridge did with the result's findings (pass, mask, block; empty: none found).",
    )
    result_findings = models.JSONField(
        default=list,
        blank=True,
        help_text="What the bridge's inspection found in the result (mcpbridge.inspection): kind, detector, "
        "where, and an excerpt with secrets masked.",
    )
    # A result held for review (Team.ResultAction.HOLD): a second decision, on what came back.
    result_review = models.CharField(
        max_length=10,
        choices=ResultReview.choices,
        blank=True,
        help_text="Empty unless the result was held for a reviewer before the model read it.",
    )
    result_held = models.JSONField(
        default=dict,
        blank=True,
        help_text='The held result as the reviewer reads it: {"texts": [{"path", "text"}], "truncated": …}.',
    )
    result_deadline = models.DateTimeField(null=True, blank=True, help_text="When a held result is blocked.")
    result_reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    result_reviewed_at = models.DateTimeField(null=True, blank=True)
    result_review_reason = models.CharField(max_length=1000, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    detached_until = models.DateTimeField(
        null=True,
        blank=True,
        help_text="Set when the bridge connection that held this undecided call closed: the call is "
        "cancelled at this time unless a bridge of its token follows it again (services/presence.py).",
    )
    payload_purged_at = models.DateTimeField(
        null=True,
        blank=True,
        help_text="When retention cleared the arguments and result (the audit chain stays).",
    )

    class Meta:
        indexes: ClassVar = [
            models.Index(fields=["team", "state", "deadline"], name="call_team_state"),
            models.Index(fields=["token", "arguments_hash"], name="call_token_args"),
            models.Index(fields=["state", "deadline"], name="call_state_deadline"),
            # History, the Audit page and its exports read a team's calls newest first.
            models.Index(fields=["team", "-created_at"], name="call_team_newest"),
            # The sweep of held results past their deadline.
            models.Index(fields=["result_review", "result_deadline"], name="call_result_review"),
            # The sweep of held calls whose bridge went away; nearly every row has none, hence partial.
            models.Index(
                fields=["detached_until"],
                name="call_detached",
                condition=models.Q(detached_until__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.server}/{self.tool} {self.state}"

    def result_policy(self) -> dict[str, str]:
        """What the bridge does with this call's result's findings: the team's policy, with the overrides of
        the rule that allowed it (``Rule.result_policy_over``). Reads ``team`` and ``rule``: load them first
        (``select_related``) where async code reads this."""
        policy = self.team.result_policy()
        return self.rule.result_policy_over(policy) if self.rule is not None else policy


class AuditEvent(models.Model):
    """An append-only record of what happened: a call's step, or a change to tokens, rules or members.

    Written only by ``approvals.services.audit.audit_record``; the database refuses UPDATE and DELETE
    of these rows, and each row is chained to the one before by hash (see docs/audit.md). The four
    references are plain ids without a database constraint and are never cleared: deleting a team, user,
    token or call leaves its audit rows untouched (and the id dangling).
    """

    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    """The team it concerns; empty for events about a user alone."""
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="+",
    )
    """Who did it; empty when Signoff did it (rules, deadlines). Their name is also in ``data["actor"]``."""
    token = models.ForeignKey(
        BridgeToken, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    """The bridge token involved, if any."""
    call = models.ForeignKey(
        ToolCall,
        null=True,
        blank=True,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        related_name="events",
    )
    """The call involved, if any."""
    kind = models.CharField(max_length=40)
    """What happened, dotted: ``call.allowed``, ``token.revoked``…"""
    created_at = models.DateTimeField(default=timezone.now)
    """When it happened."""
    data = models.JSONField(default=dict)
    """Details of the event (reason, rule, result summary…); never a secret."""
    seq = models.PositiveBigIntegerField(unique=True)
    """Position in the one audit chain: 1, 2, 3… without a gap."""
    prev_hash = models.CharField(max_length=64)
    """``hash`` of the event at ``seq - 1``; 64 zeros for the first."""
    hash = models.CharField(max_length=64)
    """SHA-256 (hex) of this event's canonical form, which includes ``prev_hash``."""

    class Meta:
        indexes: ClassVar = [models.Index(fields=["team", "created_at"], name="audit_team_time")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.kind}"


class RateLimit(models.Model):
    """At most ``max_calls`` matching calls per window, counted per token, per team or per (server, tool)."""

    class Scope(models.TextChoices):
        TOKEN = "token", "Per token"
        TEAM = "team", "Per team"
        TOOL = "tool", "Per server and tool"

    class Window(models.TextChoices):
        MINUTE = "minute", "Minute"
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="rate_limits")
    scope = models.CharField(max_length=8, choices=Scope.choices)
    server = models.CharField(max_length=128, default="*", help_text="Server name or glob the limit counts.")
    tool = models.CharField(max_length=128, default="*", help_text="Tool name or glob the limit counts.")
    window = models.CharField(max_length=8, choices=Window.choices)
    max_calls = models.PositiveIntegerField()
    enabled = models.BooleanField(default=True)
    note = models.CharField(max_length=500, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        scope = self.get_scope_display().lower()
        return f"{self.max_calls} calls per {self.window} {scope} ({self.server}/{self.tool})"


class NotificationChannel(models.Model):
    """Where a team hears of held calls and alerts: email, a Slack-compatible webhook or a signed webhook."""

    class Kind(models.TextChoices):
        EMAIL = "email", "Email"
        SLACK = "slack", "Slack-compatible webhook"
        WEBHOOK = "webhook", "Signed webhook"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="notification_channels")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    name = models.CharField(max_length=100)
    target = models.CharField(
        max_length=1000, help_text="Email addresses (comma separated) or the webhook URL."
    )
    secret = models.CharField(
        max_length=128, blank=True, help_text="HMAC-SHA256 key of a signed webhook; generated by Signoff."
    )
    events = models.JSONField(default=list, help_text='What it is told about: "call.held", "alert".')
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    last_sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"


class Alert(models.Model):
    """Something a team's admins should look at. Repeats of an open alert count up instead of piling up."""

    class Kind(models.TextChoices):
        VOLUME = "volume", "Unusual call volume"
        DENIALS = "denials", "Burst of denials"
        RATE_LIMIT = "rate_limit", "Rate limit hit"
        TOOL_CHANGED = "tool_changed", "Tool definition changed"
        NEW_ADDRESS = "new_address", "Token used from a new address"
        RESULT = "result", "Instructions or hidden text in a result"
        NETWORK = "network", "Connection from outside the allowed networks"

    class State(models.TextChoices):
        OPEN = "open", "Open"
        ACKNOWLEDGED = "acknowledged", "Acknowledged"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    key = models.CharField(max_length=200, help_text="What makes two alerts the same one (kind-specific).")
    state = models.CharField(max_length=16, choices=State.choices, default=State.OPEN)
    message = models.CharField(max_length=1000)
    data = models.JSONField(default=dict)
    token = models.ForeignKey(BridgeToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    count = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    acknowledged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes: ClassVar = [models.Index(fields=["team", "state", "-last_seen_at"], name="alert_team_state")]
        constraints: ClassVar = [
            models.UniqueConstraint(
                fields=["team", "kind", "key"],
                condition=models.Q(state="open"),
                name="one_open_alert_per_key",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()}: {self.message}"


class Upstream(models.Model):
    """An upstream MCP server that the team's bridges front, as they last reported it (the inventory).

    One per team and server name (the bridge's ``--name``, which rules and scopes match). What a bridge
    reports is masked before it is sent and again before it is stored: commands and URLs carry no
    secret, and of the environment only variable names are kept. Calls are counted from ``ToolCall`` when
    read, not here.
    """

    class Transport(models.TextChoices):
        STDIO = "stdio", "stdio"
        HTTP = "http", "HTTP"

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="upstreams")
    name = models.CharField(max_length=128, help_text="The server's name in Signoff (mcpbridge --name).")
    transport = models.CharField(max_length=8, choices=Transport.choices)
    command = models.JSONField(
        default=list, blank=True, help_text="The stdio upstream's command line, secrets masked."
    )
    url = models.CharField(max_length=2048, blank=True, help_text="The HTTP upstream's URL, secrets masked.")
    env_names = models.JSONField(
        default=list, blank=True, help_text="Names of the environment variables it gets; never values."
    )
    server_name = models.CharField(max_length=128, blank=True, help_text="Its name from initialize.")
    server_version = models.CharField(max_length=128, blank=True, help_text="Its version from initialize.")
    protocol_version = models.CharField(max_length=40, blank=True, help_text="MCP protocol version.")
    capabilities = models.JSONField(default=dict, blank=True, help_text="Its capabilities from initialize.")
    tools = models.JSONField(
        default=dict, blank=True, help_text="Its tools: name -> {hash, title, annotations}."
    )
    reported = models.JSONField(
        default=list,
        blank=True,
        help_text="Which of the fields above some bridge reported (an older bridge sends fewer).",
    )
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["team", "name"], name="one_upstream_per_team_name")
        ]

    def __str__(self) -> str:
        return self.name


class UpstreamUse(models.Model):
    """Who runs an upstream: one bridge token's use of it, with what that token's bridge last reported
    (people run different versions and command lines of the same server)."""

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="uses")
    token = models.ForeignKey(BridgeToken, on_delete=models.CASCADE, related_name="upstream_uses")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    snapshot = models.JSONField(default=dict, blank=True, help_text="What this token's bridge last reported.")
    first_seen_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints: ClassVar = [
            models.UniqueConstraint(fields=["upstream", "token"], name="one_use_per_upstream_token")
        ]

    def __str__(self) -> str:
        return f"{self.upstream} via {self.token}"


class UpstreamChange(models.Model):
    """A change in what a bridge reported of an upstream: a new version, tools added or removed, a
    changed command line, environment or capabilities. Appended, never edited."""

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="changes")
    at = models.DateTimeField(default=timezone.now)
    token = models.ForeignKey(BridgeToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    changes = models.JSONField(
        default=list, help_text='[{"field": "server_version", "before": …, "after": …}, …]'
    )

    class Meta:
        indexes: ClassVar = [models.Index(fields=["upstream", "-at"], name="upstream_change_newest")]

    def __str__(self) -> str:
        return f"{self.upstream} changed at {self.at:%Y-%m-%d %H:%M}"


class ServerReview(models.Model):
    """A team admin's answers to the security checklist for one upstream server: a sign-off, appended,
    never edited (the newest is the server's current status). ``approved`` is the admin's verdict; the
    review covers the command line or URL it was given for (``reviewed``), and a server reported with
    another one needs a new review."""

    upstream = models.ForeignKey(Upstream, on_delete=models.CASCADE, related_name="reviews")
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField(default=timezone.now)
    answers = models.JSONField(
        default=dict, help_text='{question key: {"answer": "yes" | "no" | "n/a", "note": "…"}}'
    )
    approved = models.BooleanField(default=False)
    note = models.TextField(blank=True, max_length=2000)
    reviewed = models.JSONField(
        default=dict,
        blank=True,
        help_text="What was reviewed: the server's transport, command or URL, and version at the time.",
    )

    class Meta:
        indexes: ClassVar = [models.Index(fields=["upstream", "-at"], name="server_review_newest")]

    def __str__(self) -> str:
        verdict = "approved" if self.approved else "not approved"
        return f"{self.upstream} {verdict} at {self.at:%Y-%m-%d %H:%M}"
