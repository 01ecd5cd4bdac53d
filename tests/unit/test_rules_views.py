"""The Rules pages with Django's test client: who may see and do what, and what each page shows.

Admins manage rules; reviewers and auditors read (list, rule pages, dry run, export); reviewers may create
rules unless the team restricts it to admins; members, other teams and anonymous visitors may not.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from approvals import rules_views
from approvals.models import AuditEvent, Rule, ToolCall
from approvals.policyfile import export_text
from approvals.services.rules import rule_create
from approvals.services.teams import member_add, user_get_or_create

from .conftest import SERVER

pytestmark = pytest.mark.django_db

WITHIN = {"path": "path", "op": "within", "value": "/srv/project"}
LIST = reverse("approvals:rules")
NEW = reverse("approvals:rule_new")
DRY_RUN = reverse("approvals:rules_dry_run")
EXPORT = reverse("approvals:rules_export")
IMPORT = reverse("approvals:rules_import")
LOGIN = reverse("account_login")
ROLES = ["anonymous", "admin", "reviewer", "auditor", "member", "outsider"]


@pytest.fixture
def auditor(team_a: Any) -> Any:
    """Reads team alpha; decides and changes nothing."""
    user = user_get_or_create(email="aude@example.com", password="correct horse battery staple")
    member_add(team=team_a, user=user, role="auditor")
    return user


@pytest.fixture
def rule(team_a: Any, admin: Any) -> Rule:
    return rule_create(
        team=team_a,
        by=admin,
        effect="allow",
        server=SERVER,
        tool="read_file",
        constraints=[WITHIN],
        note="project files",
    )


@pytest.fixture
def people(admin, reviewer, auditor, member, outsider) -> dict[str, Any]:
    return {"admin": admin, "reviewer": reviewer, "auditor": auditor, "member": member, "outsider": outsider}


def client_for(people: dict[str, Any], role: str) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(people[role])
    return client


def with_team(url: str) -> str:
    return f"{url}?team=alpha"


def rule_url(name: str, rule: Rule) -> str:
    return reverse(f"approvals:{name}", args=[rule.pk])


def expected(role: str, allowed: set[str]) -> int:
    if role == "anonymous":
        return 302
    return 200 if role in allowed else 403


READERS = {"admin", "reviewer", "auditor"}
CREATORS = {"admin", "reviewer"}
ADMINS = {"admin"}


# --- access ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("page", "allowed"),
    [
        ("list", READERS),
        ("new", CREATORS),
        ("detail", READERS),
        ("edit", ADMINS),
        ("dry_run", READERS),
        ("export", READERS),
        ("import", ADMINS),
    ],
)
def test_who_may_open_each_page(people, rule, role, page, allowed) -> None:
    urls = {
        "list": with_team(LIST),
        "new": with_team(NEW),
        "detail": rule_url("rule_detail", rule),
        "edit": rule_url("rule_edit", rule),
        "dry_run": with_team(DRY_RUN),
        "export": with_team(EXPORT),
        "import": with_team(IMPORT),
    }
    response = client_for(people, role).get(urls[page])
    assert response.status_code == expected(role, allowed)
    if role == "anonymous":
        assert response["Location"].startswith(LOGIN)


def _post(client: Client, action: str, rule: Rule) -> Any:
    if action == "create":
        return client.post(
            with_team(NEW),
            {"effect": "deny", "server": "db", "tool": "drop", "constraints": "[]", "enabled": "on"},
        )
    if action == "edit":
        return client.post(
            rule_url("rule_edit", rule),
            {"effect": "deny", "server": SERVER, "tool": "read_file", "constraints": "[]", "enabled": "on"},
        )
    if action == "disable":
        return client.post(rule_url("rule_enabled", rule), {"enabled": "0"})
    if action == "delete":
        return client.post(rule_url("rule_delete", rule))
    if action == "import":
        upload = SimpleUploadedFile("p.yaml", b"version: 1\nrules: []\n")
        return client.post(with_team(IMPORT), {"file": upload})
    assert action == "dry_run"
    return client.post(with_team(DRY_RUN), {"server": SERVER, "tool": "read_file", "arguments": "{}"})


def _changed(action: str, rule: Rule) -> bool:
    current = Rule.objects.filter(pk=rule.pk).first()
    return {
        "create": lambda: Rule.objects.filter(server="db").exists(),
        "edit": lambda: current is not None and current.effect == "deny",
        "disable": lambda: current is not None and not current.enabled,
        "delete": lambda: current is None,
        "import": lambda: current is None,
        "dry_run": lambda: False,
    }[action]()


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("action", "allowed"),
    [
        ("create", CREATORS),
        ("edit", ADMINS),
        ("disable", ADMINS),
        ("delete", ADMINS),
        ("import", ADMINS),
        ("dry_run", READERS),
    ],
)
def test_who_may_do_what(people, rule, role, action, allowed) -> None:
    events = AuditEvent.objects.count()
    response = _post(client_for(people, role), action, rule)
    if role == "anonymous":
        assert response.status_code == 302 and response["Location"].startswith(LOGIN)
    elif role in allowed:
        assert response.status_code in (200, 302)
        assert _changed(action, rule) is (action != "dry_run")
        return
    else:
        assert response.status_code == 403
    assert not _changed(action, rule)
    assert AuditEvent.objects.count() == events


def test_reviewers_may_not_create_rules_when_the_team_restricts_it(team_a, reviewer, admin) -> None:
    team_a.rules_admins_only = True
    team_a.save(update_fields=["rules_admins_only"])
    client = Client()
    client.force_login(reviewer)
    assert client.get(NEW).status_code == 403
    response = client.post(NEW, {"effect": "allow", "server": "s", "tool": "t", "constraints": ""})
    assert response.status_code == 403 and not Rule.objects.exists()
    listing = client.get(LIST).content.decode()
    assert "Only admins may create rules." in listing and f'href="{NEW}"' not in listing
    admin_client = Client()
    admin_client.force_login(admin)
    admin_client.post(NEW, {"effect": "allow", "server": "s", "tool": "t", "constraints": ""})
    assert Rule.objects.filter(server="s").exists()


def test_another_teams_rule_is_forbidden_and_a_missing_one_is_not_found(people, rule) -> None:
    outsider = client_for(people, "outsider")
    for name in ("rule_detail", "rule_edit"):
        assert outsider.get(rule_url(name, rule)).status_code == 403
    admin = client_for(people, "admin")
    assert admin.get(reverse("approvals:rule_detail", args=[rule.pk + 1000])).status_code == 404


def test_a_post_without_the_csrf_token_is_refused(admin, rule) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin)
    response = client.post(rule_url("rule_delete", rule))
    assert response.status_code == 403
    assert Rule.objects.filter(pk=rule.pk).exists()


def test_the_rules_link_is_shown_to_those_who_may_read_rules(people, rule) -> None:
    for role in ("admin", "reviewer", "auditor", "member"):
        page = client_for(people, role).get(reverse("approvals:tokens")).content.decode()
        assert (f'href="{LIST}"' in page) is (role in READERS), role


# --- list ------------------------------------------------------------------------------------------------


def shown(response: Any) -> list[int]:
    return [int(pk) for pk in re.findall(r'<tr data-rule="(\d+)"', response.content.decode())]


def test_the_list_shows_rules_in_order_with_search_and_filters(team_a, admin) -> None:
    def make(**values: Any) -> Rule:
        return rule_create(team=team_a, by=admin, **({"effect": "allow", "server": SERVER} | values))

    read = make(tool="read_file", note="project docs")
    write = make(tool="write_file", effect="deny")
    time = make(server="time", tool="now", enabled=False)
    client = Client()
    client.force_login(admin)
    assert shown(client.get(LIST)) == [read.pk, write.pk, time.pk]
    assert shown(client.get(LIST, {"q": "WRITE"})) == [write.pk]
    assert shown(client.get(LIST, {"q": "docs"})) == [read.pk]
    assert shown(client.get(LIST, {"q": "time"})) == [time.pk]
    assert shown(client.get(LIST, {"enabled": "disabled"})) == [time.pk]
    assert shown(client.get(LIST, {"enabled": "enabled", "effect": "allow"})) == [read.pk]
    assert "No rule matches" in client.get(LIST, {"q": "nothing"}).content.decode()


def test_the_list_escapes_what_people_wrote(team_a, admin) -> None:
    rule_create(
        team=team_a, by=admin, effect="allow", server="<b>s</b>", tool="t", note="<script>x()</script>"
    )
    client = Client()
    client.force_login(admin)
    page = client.get(LIST).content.decode()
    assert "<script>x()" not in page and "&lt;script&gt;x()" in page
    assert "&lt;b&gt;s&lt;/b&gt;" in page


def test_readers_see_no_management_buttons(people, rule) -> None:
    page = client_for(people, "auditor").get(LIST).content.decode()
    assert f'data-rule="{rule.pk}"' in page
    assert rule_url("rule_delete", rule) not in page and rule_url("rule_edit", rule) not in page
    assert f'href="{NEW}"' not in page and f'href="{IMPORT}"' not in page
    admin_page = client_for(people, "admin").get(LIST).content.decode()
    assert rule_url("rule_delete", rule) in admin_page and f'href="{IMPORT}"' in admin_page


def test_the_list_is_paginated(team_a, admin, monkeypatch) -> None:
    monkeypatch.setattr(rules_views, "RULES_PER_PAGE", 2)
    made = [rule_create(team=team_a, by=admin, effect="allow", server=SERVER, tool=f"t{i}") for i in range(3)]
    client = Client()
    client.force_login(admin)
    assert shown(client.get(LIST, {"effect": "allow"})) == [made[0].pk, made[1].pk]
    second = client.get(LIST, {"effect": "allow", "page": 2})
    assert shown(second) == [made[2].pk]
    assert "effect=allow&amp;page=1" in second.content.decode()


# --- create and edit -------------------------------------------------------------------------------------


def test_an_admin_creates_a_rule_with_constraints(team_a, admin) -> None:
    client = Client()
    client.force_login(admin)
    response = client.post(
        NEW,
        {
            "effect": "allow",
            "server": " files ",
            "tool": "read_*",
            "constraints": json.dumps([WITHIN]),
            "note": "project",
            "enabled": "on",
            "expires_at": "2030-01-31T09:00",
        },
    )
    rule = Rule.objects.get(team=team_a)
    assert response.status_code == 302 and response["Location"] == rule_url("rule_detail", rule)
    assert (rule.server, rule.tool, rule.constraints, rule.created_by) == (SERVER, "read_*", [WITHIN], admin)
    assert rule.expires_at is not None and rule.expires_at.isoformat() == "2030-01-31T09:00:00+00:00"
    assert AuditEvent.objects.filter(kind="rule.created", actor=admin).exists()


def test_a_reviewer_creates_a_rule_when_the_team_allows_it(team_a, reviewer) -> None:
    client = Client()
    client.force_login(reviewer)
    client.post(NEW, {"effect": "allow", "server": SERVER, "tool": "read_file", "constraints": ""})
    assert Rule.objects.get(team=team_a).created_by == reviewer


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        ('[{"path": "p", "op": "within", "value": 3}]', "constraints[0].value: within takes a directory"),
        ('[{"path": "p" "op"}]', "Constraints is not valid JSON: Expecting &#x27;,&#x27; delimiter (line 1"),
        ('[{"path": 5, "op": "equals", "value": 1}]', "constraints[0].path: must be an argument name"),
    ],
)
def test_a_refused_constraint_is_shown_on_the_form(team_a, admin, constraints, message) -> None:
    client = Client()
    client.force_login(admin)
    response = client.post(
        NEW, {"effect": "allow", "server": SERVER, "tool": "t", "constraints": constraints}
    )
    assert response.status_code == 200
    assert message in response.content.decode()
    assert not Rule.objects.exists()


def test_the_new_rule_form_is_prefilled_from_a_link(admin) -> None:
    client = Client()
    client.force_login(admin)
    page = client.get(NEW, {"server": "db", "tool": "query", "effect": "deny"}).content.decode()
    assert 'value="db"' in page and 'value="query"' in page
    assert '<option value="deny" selected>' in page


def test_an_admin_edits_a_rule(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    form = client.get(rule_url("rule_edit", rule)).content.decode()
    assert "/srv/project" in form and 'value="project files"' in form
    response = client.post(
        rule_url("rule_edit", rule),
        {"effect": "deny", "server": SERVER, "tool": "read_file", "constraints": "[]", "note": "no"},
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.effect, rule.constraints, rule.note, rule.enabled) == ("deny", [], "no", False)
    assert AuditEvent.objects.filter(kind="rule.updated").count() == 1


def test_an_admin_sets_a_rules_result_policy_and_the_pages_show_it(team_a, rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    form = client.get(rule_url("rule_edit", rule)).content.decode()
    assert "Results of the calls it allows" in form
    assert "The team&#x27;s setting (mask)" in form and "The team&#x27;s setting (pass)" in form
    response = client.post(
        rule_url("rule_edit", rule),
        {
            "effect": "allow",
            "server": SERVER,
            "tool": "read_file",
            "constraints": json.dumps([WITHIN]),
            "note": "project files",
            "enabled": "on",
            "result_secrets": "block",
            "result_personal_data": "",
        },
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert (rule.result_instructions, rule.result_secrets, rule.result_personal_data) == ("", "block", "")
    event = AuditEvent.objects.get(kind="rule.updated")
    assert event.data["changed"] == ["result_secrets"] and event.data["after"] == {"result_secrets": "block"}

    detail = client.get(rule_url("rule_detail", rule)).content.decode()
    assert "Secrets: <strong>block</strong>" in detail
    assert "Personal data: <strong>pass</strong> (the team's)" in detail
    listed = client.get(with_team(LIST)).content.decode()
    assert "results: secrets block" in listed
    edit = client.get(rule_url("rule_edit", rule)).content.decode()
    assert '<option value="block" selected>block</option>' in edit


def test_a_deny_rule_with_a_result_policy_is_refused_on_the_form(team_a, admin) -> None:
    client = Client()
    client.force_login(admin)
    response = client.post(
        NEW, {"effect": "deny", "server": SERVER, "tool": "t", "constraints": "", "result_secrets": "mask"}
    )
    assert response.status_code == 200
    assert "a deny rule runs no call, so it has no result" in response.content.decode()
    response = client.post(
        NEW, {"effect": "allow", "server": SERVER, "tool": "t", "constraints": "", "result_secrets": "drop"}
    )
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert not Rule.objects.exists()


def test_switching_a_rule_off_and_on_returns_to_the_page(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    response = client.post(rule_url("rule_enabled", rule), {"enabled": "0", "next": f"{LIST}?q=read"})
    assert response["Location"] == f"{LIST}?q=read"
    rule.refresh_from_db()
    assert not rule.enabled
    response = client.post(rule_url("rule_enabled", rule), {"enabled": "1", "next": "https://evil.example/"})
    assert response["Location"] == LIST
    rule.refresh_from_db()
    assert rule.enabled
    response = client.post(rule_url("rule_enabled", rule), {"enabled": "1", "next": "/\\evil.example/"})
    assert response["Location"] == LIST


def test_deleting_a_rule(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    response = client.post(rule_url("rule_delete", rule), follow=True)
    assert "is deleted" in response.content.decode()
    assert not Rule.objects.exists()


def test_pages_refuse_the_wrong_method(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    assert client.get(rule_url("rule_delete", rule)).status_code == 405
    assert client.get(rule_url("rule_enabled", rule)).status_code == 405
    assert client.post(LIST).status_code == 405


# --- a rule's page ---------------------------------------------------------------------------------------


def test_a_rules_page_lists_the_calls_it_decided_newest_first(
    rule, admin, auditor, member_token, submit, monkeypatch
) -> None:
    monkeypatch.setattr(rules_views, "CALLS_PER_PAGE", 2)
    calls = [submit(member_token.token, arguments={"path": f"/srv/project/{i}"}).call for i in range(3)]
    held = submit(member_token.token, arguments={"path": "/etc/passwd"}).call  # not this rule's
    assert [c.rule_id for c in calls] == [rule.pk] * 3 and held.rule_id is None
    for i, call in enumerate(calls):  # distinct times, oldest first
        ToolCall.objects.filter(pk=call.pk).update(created_at=call.created_at.replace(year=2020 + i))
    client = Client()
    client.force_login(auditor)
    first = client.get(rule_url("rule_detail", rule))
    listed = re.findall(r'data-call="([0-9a-f-]+)"', first.content.decode())
    assert listed == [str(calls[2].pk), str(calls[1].pk)]
    second = client.get(rule_url("rule_detail", rule), {"page": 2})
    assert re.findall(r'data-call="([0-9a-f-]+)"', second.content.decode()) == [str(calls[0].pk)]
    assert "Page 2 of 2" in second.content.decode()
    page = first.content.decode()
    assert "path within &quot;/srv/project&quot;" in page and "project files" in page
    assert rule_url("rule_delete", rule) not in page  # auditors read only


def test_the_calls_a_rule_decided_show_secrets_masked(rule, auditor, member_token, submit) -> None:
    secret = "sgo_0badc0de_Zt6qk2Y3vQ9pL0mN8xR4sW7uE1iO5aD3"
    call = submit(member_token.token, arguments={"path": f"/srv/project/{secret}.txt"}).call
    assert call.rule_id == rule.pk
    client = Client()
    client.force_login(auditor)
    page = client.get(rule_url("rule_detail", rule)).content.decode()
    assert str(call.pk) in page
    assert secret not in page and "sgo_0badc0de…[masked]" in page


def test_a_rule_without_calls_says_so(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    assert "has not decided any call yet" in client.get(rule_url("rule_detail", rule)).content.decode()


# --- dry run ---------------------------------------------------------------------------------------------


def dry_run(client: Client, arguments: Any, *, tool: str = "read_file") -> Any:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return client.post(DRY_RUN, {"server": SERVER, "tool": tool, "arguments": text})


def test_the_dry_run_shows_the_winning_rule_and_why(team_a, rule, admin, reviewer) -> None:
    deny = rule_create(
        team=team_a,
        by=admin,
        effect="deny",
        server="*",
        tool="*",
        constraints=[{"path": "path", "op": "glob", "value": "*.key"}],
    )
    client = Client()
    client.force_login(reviewer)
    page = dry_run(client, {"path": "/srv/project/a.txt"}).content.decode()
    assert 'data-outcome="allow"' in page
    assert f"allowed by rule #{rule.pk} (files/read_file): path within &quot;/srv/project&quot;" in page
    assert f'<tr data-rule="{rule.pk}" data-status="wins">' in page
    assert f'<tr data-rule="{deny.pk}" data-status="does_not_apply">' in page
    page = dry_run(client, {"path": "/srv/project/id.key"}).content.decode()
    assert 'data-outcome="deny"' in page and f"denied by rule #{deny.pk}" in page
    assert f'<tr data-rule="{rule.pk}" data-status="applies">' in page and "deny beats allow" in page
    assert not ToolCall.objects.exists()


def test_the_dry_run_explains_why_no_rule_applied(rule, auditor) -> None:
    client = Client()
    client.force_login(auditor)
    page = dry_run(client, {"path": "/srv/project/../../etc/passwd"}).content.decode()
    assert 'data-outcome="review"' in page and "a reviewer decides" in page
    assert "outside /srv/project" in page
    assert "Create a rule" not in page  # auditors do not create rules


def test_the_dry_run_refuses_arguments_that_are_not_a_json_object(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    assert "must be a JSON object" in dry_run(client, "[1, 2]").content.decode()
    assert "is not valid JSON" in dry_run(client, "{nope").content.decode()


def test_the_dry_run_escapes_the_sample(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    page = dry_run(client, {"path": "<img src=x onerror=alert(1)>"}, tool="<b>t</b>").content.decode()
    assert "<img src=x" not in page and "<b>t</b>" not in page


# --- export and import -----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_export_downloads_the_policy_file(team_a, rule, auditor, fmt) -> None:
    client = Client()
    client.force_login(auditor)
    response = client.get(EXPORT, {"format": fmt})
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="signoff-rules-alpha.{fmt}"'
    assert response.content.decode() == export_text(team_a, fmt=fmt)
    assert yaml.safe_load(response.content)["rules"][0]["constraints"] == [WITHIN]


def test_an_uploaded_file_replaces_the_rules(team_a, team_b, rule, admin, outsider) -> None:
    text = export_text(team_a).encode()
    bravo_admin = user_get_or_create(email="bea@example.com", password="correct horse battery staple")
    member_add(team=team_b, user=bravo_admin, role="admin")
    client = Client()
    client.force_login(bravo_admin)
    response = client.post(IMPORT, {"file": SimpleUploadedFile("alpha.yaml", text)}, follow=True)
    assert "Imported alpha.yaml: 1 rule added, 0 removed, 0 unchanged." in response.content.decode()
    [copied] = Rule.objects.filter(team=team_b)
    assert (copied.server, copied.tool, copied.constraints, copied.created_by) == (
        SERVER,
        "read_file",
        [WITHIN],
        bravo_admin,
    )


def test_an_upload_with_one_bad_rule_changes_nothing_and_lists_the_problem(team_a, rule, admin) -> None:
    bad = (
        "version: 1\nmode: whitelist\nrules:\n"
        "  - {effect: allow, server: files, tool: read_file}\n"
        "  - {effect: allow, server: files, tool: '*',\n"
        "     constraints: [{path: p, op: within, value: rel/dir}]}\n"
    )
    client = Client()
    client.force_login(admin)
    response = client.post(IMPORT, {"file": SimpleUploadedFile("p.yaml", bad.encode())})
    page = response.content.decode()
    assert response.status_code == 200 and "Nothing was imported" in page
    assert "line 6: rules[1].constraints[0].value: directory" in page
    assert list(Rule.objects.filter(team=team_a)) == [rule]
    team_a.refresh_from_db()
    assert team_a.mode == "review"
    assert not AuditEvent.objects.filter(kind="rules.imported").exists()


def test_an_upload_that_is_not_text_is_refused(rule, admin) -> None:
    client = Client()
    client.force_login(admin)
    response = client.post(IMPORT, {"file": SimpleUploadedFile("p.yaml", b"\xff\xfe\x00")})
    assert "not UTF-8" in response.content.decode()
    assert Rule.objects.filter(pk=rule.pk).exists()
