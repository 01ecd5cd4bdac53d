"""The security checklist as a sign-off: a team admin reviews an upstream server before the team uses it.

The checklist follows the security principles Signoff is built on (least privilege, input validation,
secure communication, monitoring, human approval): each question is answered yes, no or not applicable,
with a note. A review is appended (``ServerReview``), never edited, and audited (``upstream.reviewed``).

A review covers the server as it was reviewed: its transport and its command line or URL (masked). A
server that a bridge later reports with another command line or URL "needs re-review", so an approval of
``npx server-filesystem ~/project`` does not carry over to ``npx server-filesystem /``. A new version of
the same command does not: updates are to be encouraged (``least_privilege.stale_version``).

With ``Team.require_reviewed_servers`` on, a call to a server whose status is not "approved" is denied
(``approval_refusal``), and the bridge is told why when it connects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from approvals.models import BridgeToken, ServerReview, Team, Upstream, UpstreamUse
from approvals.selectors import active_admins_of
from approvals.services.audit import audit_record


@dataclass(frozen=True)
class Question:
    key: str
    section: str
    text: str


CHECKLIST: tuple[Question, ...] = (
    Question(
        "least_privilege",
        "Permissions",
        "Does the server get only the access its tools need: the directories, database rights and API "
        "scopes, and nothing more?",
    ),
    Question(
        "own_credentials",
        "Permissions",
        "Are its credentials its own, scoped to this use and revocable, rather than a person's "
        "full-access account?",
    ),
    Question(
        "secrets_from_environment",
        "Permissions",
        "Do its secrets come from the environment or a secrets store, never from its command line or a "
        "file in a repository?",
    ),
    Question(
        "validates_inputs",
        "Inputs",
        "Does it validate its tools' arguments: types, lengths, and paths kept inside its root?",
    ),
    Question(
        "no_injection",
        "Inputs",
        "Are arguments kept out of shells and queries (no commands or SQL built from strings)?",
    ),
    Question(
        "secure_transport",
        "Communications",
        "Is it reached over stdio or TLS (https://), never plain HTTP across a network?",
    ),
    Question(
        "limited_egress",
        "Communications",
        "Is what it can reach on the network limited to what its tools need?",
    ),
    Question(
        "trusted_source",
        "Communications",
        "Does it come from a trusted source, at a pinned version that is kept up to date?",
    ),
    Question(
        "audited",
        "Monitoring",
        "Are its calls audited (Signoff's audit log) and its own logs kept?",
    ),
    Question(
        "alerts_watched",
        "Monitoring",
        "Does someone receive and act on the team's alerts for it?",
    ),
    Question(
        "destructive_reviewed",
        "Human approval",
        "Do calls that change or delete things need a person's approval (no allow rule without "
        "argument constraints for them)?",
    ),
    Question(
        "rules_reviewed",
        "Human approval",
        "Are the allow rules for this server reviewed, with argument constraints where they matter?",
    ),
)
"""The questions, in the order the form shows them."""
ANSWERS = ("yes", "no", "n/a")
MAX_NOTE = 1000


class ReviewError(ValueError):
    """A checklist that cannot be accepted, with a message for the admin (``field`` names the question)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def checklist_answers(raw: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Validate the answers: every question answered yes, no or n/a; notes at most ``MAX_NOTE`` long.

    ``raw`` maps each question's key to ``{"answer": …, "note": …}``.
    """
    answers: dict[str, dict[str, str]] = {}
    for question in CHECKLIST:
        given = raw.get(question.key) or {}
        answer = str(given.get("answer", "")).strip().lower()
        note = str(given.get("note", "")).strip()
        if answer not in ANSWERS:
            raise ReviewError(f"Answer “{question.text}” with yes, no or n/a.", field=question.key)
        if len(note) > MAX_NOTE:
            raise ReviewError(f"A note may be {MAX_NOTE} characters at most.", field=question.key)
        answers[question.key] = {"answer": answer, "note": note}
    return answers


def reviewed_target(upstream: Upstream | Mapping[str, Any]) -> dict[str, Any]:
    """What a review covers: the transport and the (masked) command line or URL."""
    get = (
        upstream.get if isinstance(upstream, Mapping) else lambda name, default=None: getattr(upstream, name)
    )
    transport = get("transport", "")
    if transport == Upstream.Transport.HTTP:
        return {"transport": transport, "url": get("url", "") or ""}
    return {"transport": transport, "command": list(get("command", []) or [])}


def review_submit(
    *,
    upstream: Upstream,
    author: AbstractBaseUser,
    answers: Mapping[str, Any],
    approved: bool,
    note: str = "",
) -> ServerReview:
    """Record an admin's checklist for a server, and audit it. The caller checked that ``author`` is an
    admin of the server's team.

    Approving with a "no" needs a note on that question: the admin accepts a known risk, and says why.
    """
    checked = checklist_answers(answers)
    note = note.strip()
    if len(note) > 2000:
        raise ReviewError("The review's note may be 2000 characters at most.", field="note")
    if approved:
        for question in CHECKLIST:
            if checked[question.key]["answer"] == "no" and not checked[question.key]["note"]:
                raise ReviewError(
                    f"To approve with “no” to “{question.text}”, say in its note why the risk is accepted.",
                    field=question.key,
                )
    now = timezone.now()
    with transaction.atomic():
        review = ServerReview.objects.create(
            upstream=upstream,
            author=author,  # type: ignore[misc]
            at=now,
            answers=checked,
            approved=approved,
            note=note,
            reviewed={**reviewed_target(upstream), "server_version": upstream.server_version},
        )
        audit_record(
            kind="upstream.reviewed",
            team=upstream.team,
            actor_id=author.pk,
            server=upstream.name,
            approved=approved,
            answers={key: value["answer"] for key, value in checked.items()},
            no=[key for key, value in checked.items() if value["answer"] == "no"],
            note=note,
            reviewed=review.reviewed,
        )
    return review


# --- status ------------------------------------------------------------------------------------------------
APPROVED = "approved"
NOT_APPROVED = "not_approved"
UNREVIEWED = "unreviewed"
NEEDS_REREVIEW = "needs_rereview"
STATUS_LABELS = {
    APPROVED: "Approved",
    NOT_APPROVED: "Not approved",
    UNREVIEWED: "Not reviewed",
    NEEDS_REREVIEW: "Changed since approved",
}


def status_of(review: ServerReview | None, target: Mapping[str, Any]) -> str:
    """A server's checklist status, from its newest review and what is run now (``reviewed_target``)."""
    if review is None:
        return UNREVIEWED
    if not review.approved:
        return NOT_APPROVED
    covered = reviewed_target(review.reviewed)
    return APPROVED if covered == reviewed_target(target) else NEEDS_REREVIEW


def latest_reviews(upstreams: list[Upstream]) -> dict[int, ServerReview]:
    """The newest review of each server, by ``Upstream`` id."""
    newest: dict[int, ServerReview] = {}
    reviews = (
        ServerReview.objects.filter(upstream__in=upstreams).select_related("author").order_by("-at", "-pk")
    )
    for review in reviews:
        newest.setdefault(review.upstream_id, review)
    return newest


def team_admins_text(team: Team) -> str:
    """Whom to ask: the team's admins by email (or user name), at most three."""
    admins = [
        membership.user.email or membership.user.get_username()
        for membership in active_admins_of(team=team).select_related("user")[:3]
    ]
    return ", ".join(admins) if admins else "the team's admins"


def approval_refusal(*, token: BridgeToken, server: str) -> str | None:
    """Why the token's bridge may not use ``server`` in a team that requires reviewed servers, or None
    when it may. What this token's bridge runs is what counts: people may run the same server name with
    different command lines."""
    team = token.team
    upstream = Upstream.objects.filter(team=team, name=server).first()
    review = None
    target: Mapping[str, Any] = {}
    if upstream is not None:
        review = upstream.reviews.order_by("-at", "-pk").first()
        use = (
            UpstreamUse.objects.filter(upstream=upstream, token=token)
            .values_list("snapshot", flat=True)
            .first()
        )
        target = {**reviewed_target(upstream), **(use or {})}
    status = status_of(review, target)
    if status == APPROVED:
        return None
    why = {
        UNREVIEWED: "its security checklist has not been signed off",
        NOT_APPROVED: "an admin reviewed it and did not approve it",
        NEEDS_REREVIEW: "it is run with another command line or URL than the one an admin approved",
    }[status]
    return (
        f"denied: the server '{server}' is not approved for use in the team {team.name}: {why}. "
        f"Ask a team admin ({team_admins_text(team)}) to review it on Signoff's Inventory page"
    )


def unapproved_server_refusal(*, token: BridgeToken, server: str) -> str | None:
    """``approval_refusal`` if the token's team requires reviewed servers (read fresh), else None."""
    required = (
        Team.objects.filter(pk=token.team_id).values_list("require_reviewed_servers", flat=True).first()
    )
    return approval_refusal(token=token, server=server) if required else None
