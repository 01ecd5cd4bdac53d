"""Policy as code: export, the checked reading with line numbers, the all-or-nothing import, and the
``export_rules`` / ``import_rules`` commands."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml
from django.core.management import CommandError, call_command

from approvals import policyfile
from approvals.models import AuditEvent, Rule, Team
from approvals.policyfile import PolicyFileError, export_text, import_text, parse_policy
from approvals.services.rules import rule_create

from .conftest import SERVER

pytestmark = pytest.mark.django_db

WITHIN = {"path": "path", "op": "within", "value": "/srv/project"}

GOOD = """\
version: 1
mode: whitelist
rules:
  - effect: allow
    server: files
    tool: read_file
    constraints:
      - {path: path, op: within, value: /srv/project}
    note: project files
  - effect: deny
    server: files
    tool: "*"
    constraints:
      - {path: path, op: glob, value: "*.key"}
  - effect: allow
    server: time
    tool: get_current_time
    enabled: false
    expires_at: "2030-01-31T09:00:00Z"
"""

# One bad rule among good ones: the regex on line 13 uses a backreference.
ONE_BAD = """\
version: 1
rules:
  - effect: allow
    server: files
    tool: read_file
  - effect: allow
    server: db
    tool: query
    constraints:
      - path: sql
        op: regex
        value: 'select .*'
      - {path: sql, op: regex, value: '(a)\\1'}
  - effect: deny
    server: "*"
    tool: delete_*
"""


def seed(team: Team, by: Any = None) -> list[Rule]:
    return [
        rule_create(team=team, by=by, effect="allow", server=SERVER, tool="read_file", constraints=[WITHIN]),
        rule_create(
            team=team,
            by=by,
            effect="deny",
            server="*",
            tool="delete_*",
            note="never: “delete” ünïcode",
            expires_at=datetime(2031, 5, 6, 7, 8, tzinfo=UTC),
        ),
        rule_create(team=team, by=by, effect="allow", server="time", tool="*", enabled=False),
    ]


def rows(team: Team) -> list[dict[str, Any]]:
    return list(
        Rule.objects.filter(team=team)
        .order_by("id")
        .values("effect", "server", "tool", "constraints", "note", "enabled", "expires_at")
    )


# --- export ----------------------------------------------------------------------------------------------


def test_the_yaml_export_is_the_documented_schema(team_a, admin) -> None:
    seed(team_a, admin)
    text = export_text(team_a)
    assert text.startswith("# Signoff policy file (schema version 1)")
    document = yaml.safe_load(text)
    assert document["version"] == 1 and document["team"] == "alpha" and document["mode"] == "review"
    assert document["rules"][0] == {
        "effect": "allow",
        "server": SERVER,
        "tool": "read_file",
        "constraints": [WITHIN],
        "enabled": True,
    }
    assert document["rules"][1]["expires_at"] == "2031-05-06T07:08:00Z"
    assert document["rules"][1]["note"] == "never: “delete” ünïcode"
    assert document["rules"][2]["enabled"] is False
    assert export_text(team_a) == text  # stable


def test_the_json_export_holds_the_same_document(team_a, admin) -> None:
    seed(team_a, admin)
    assert json.loads(export_text(team_a, fmt="json")) == yaml.safe_load(export_text(team_a))


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_export_then_import_gives_the_same_rules(team_a, team_b, admin, fmt) -> None:
    seed(team_a, admin)
    result = import_text(team=team_b, text=export_text(team_a, fmt=fmt), by=None, fmt=fmt)
    assert (result.added, result.removed, result.kept) == (3, 0, 0)
    assert rows(team_b) == rows(team_a)
    assert export_text(team_b, fmt=fmt) == export_text(team_a, fmt=fmt).replace("alpha", "bravo")


def test_importing_the_same_file_again_changes_nothing_and_keeps_history(
    team_a, admin, member_token, submit
) -> None:
    seed(team_a, admin)
    call = submit(member_token.token, arguments={"path": "/srv/project/x"}).call
    before = list(Rule.objects.filter(team=team_a).values_list("pk", flat=True))
    result = import_text(team=team_a, text=export_text(team_a), by=admin)
    assert (result.added, result.removed, result.kept, result.changed) == (0, 0, 3, False)
    assert list(Rule.objects.filter(team=team_a).values_list("pk", flat=True)) == before
    call.refresh_from_db()
    assert call.rule_id == before[0]


# --- import ----------------------------------------------------------------------------------------------


def test_an_import_replaces_the_rules_and_sets_the_mode(team_a, admin, member_token, submit) -> None:
    old = seed(team_a, admin)
    result = import_text(team=team_a, text=GOOD, by=admin, filename="policy.yaml")
    assert (result.added, result.removed, result.kept) == (3, 3, 0)
    assert (result.mode_before, result.mode_after) == ("review", "whitelist")
    assert str(result) == "3 rules added, 3 removed, 0 unchanged; mode review → whitelist"
    team_a.refresh_from_db()
    assert team_a.mode == "whitelist"
    assert not Rule.objects.filter(pk__in=[r.pk for r in old]).exists()
    imported = Rule.objects.filter(team=team_a).order_by("id")
    assert [(r.effect, r.tool, r.enabled, r.created_by_id) for r in imported] == [
        ("allow", "read_file", True, admin.pk),
        ("deny", "*", True, admin.pk),
        ("allow", "get_current_time", False, admin.pk),
    ]
    assert imported[2].expires_at == datetime(2030, 1, 31, 9, 0, tzinfo=UTC)
    [event] = AuditEvent.objects.filter(kind="rules.imported")
    assert event.actor_id == admin.pk and event.data["source"] == "policy.yaml"
    assert len(event.data["added"]) == 3 and len(event.data["removed"]) == 3
    assert event.data["mode_before"] == "review" and event.data["mode_after"] == "whitelist"
    # The compiled rules follow at once (bulk_create sends no signal: the import moves the version).
    assert submit(member_token.token, arguments={"path": "/srv/project/a"}).call.state == "allowed"
    assert submit(member_token.token, arguments={"path": "/srv/project/a.key"}).call.state == "denied"
    assert submit(member_token.token, tool="write_file").call.state == "denied"  # whitelist


def test_a_file_with_one_bad_rule_changes_nothing_and_names_the_line(team_a, admin) -> None:
    seed(team_a, admin)
    before, events = rows(team_a), AuditEvent.objects.count()
    with pytest.raises(PolicyFileError) as caught:
        import_text(team=team_a, text=ONE_BAD, by=admin)
    [problem] = caught.value.problems
    assert problem.line == 13
    assert str(problem).startswith("line 13: rules[1].constraints[1].value: regex '(a)\\\\1': backreferences")
    assert rows(team_a) == before
    assert AuditEvent.objects.count() == events
    team_a.refresh_from_db()
    assert team_a.mode == "review"


def test_every_problem_is_listed_in_line_order(team_a) -> None:
    text = """\
version: 1
mode: sometimes
rules:
  - effect: maybe
    server: files
    tool: ""
    expires_at: 2030-01-01
  - server: x
    tool: y
    colour: red
  - just text
"""
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text)
    assert [str(p) for p in caught.value.problems] == [
        "line 2: mode: must be one of: review, whitelist",
        "line 4: rules[0].effect: must be allow or deny",
        "line 6: rules[0].tool: give a tool name or a glob such as *",
        "line 7: rules[0].expires_at: '2030-01-01' has no timezone: add Z for UTC or an offset such as "
        "+02:00",
        "line 8: rules[1]: effect is missing",
        "line 10: rules[1].colour: unknown key (expected: effect, server, tool, constraints, note, results, "
        "enabled, expires_at)",
        "line 11: rules[2]: a rule must be a mapping with effect, server and tool",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nrules:\n  - effect: allow\n    server: [files\n", "line 5: not valid YAML"),
        ("version: 1\nrules: []\nrules: []\n", "line 3: the key 'rules' appears twice"),
        ("version: 1\nx: &a [1]\nrules: *a\n", "anchors and aliases"),
        ("version: 1\nrules:\n  - <<: {effect: allow}\n", "line 3: merge keys"),
        ("", "the file is empty"),
        ("- 1\n- 2\n", "line 1: the file must hold a mapping"),
        ("rules: []\n", "line 1: version is missing"),
        ("version: 2\nrules: []\n", "line 1: version: unsupported version 2"),
        ("version: 1\n", "rules is missing"),
        ("version: 1\nrules: {}\n", "line 2: rules: must be a list"),
        ("version: 1\nteam: [x]\nrules: []\n", "line 2: team: must be a team slug"),
        ('{"version": 1,\n "rules": [\n  {"effect": "allow",,}]}', "line 3: not valid JSON"),
        ('{"version": 1,\n "rules": [],\n "rules": []}', "line 3: the key 'rules' appears twice"),
        ('{"version": 1, "rules": [{"effect": "allow", "server": "a", "tool": NaN}]}', "NaN is not"),
        (
            '{"version": 1,\n "rules": [\n  {"effect": "allow", "server": "s", "tool": "t",\n'
            '   "constraints": [{"path": "p", "op": "range", "value": {"min": 5, "max": 1}}]}]}',
            "line 4: rules[0].constraints[0].value: range min is greater than its max",
        ),
    ],
)
def test_unreadable_files_are_refused_with_the_line(text, expected) -> None:
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text)
    assert expected in str(caught.value)


def test_dates_stay_text_and_need_a_timezone() -> None:
    checked = parse_policy(
        "version: 1\nrules:\n  - {effect: allow, server: s, tool: t, expires_at: 2030-01-31T09:00:00+02:00,\n"
        "     constraints: [{path: day, op: equals, value: 2030-01-31}]}\n"
    )
    [rule] = checked.rules
    assert rule.expires_at == datetime(2030, 1, 31, 7, 0, tzinfo=UTC)
    assert rule.constraints == [{"path": "day", "op": "equals", "value": "2030-01-31"}]


def test_an_empty_rule_list_removes_every_rule(team_a, admin) -> None:
    seed(team_a, admin)
    result = import_text(team=team_a, text="version: 1\nrules: []\n", by=admin)
    assert (result.removed, Rule.objects.filter(team=team_a).count()) == (3, 0)


def test_oversized_and_non_utf8_files_are_refused() -> None:
    with pytest.raises(PolicyFileError, match="larger than"):
        policyfile.decode_upload(b"#" * (policyfile.MAX_FILE_BYTES + 1))
    with pytest.raises(PolicyFileError, match="line 2: the file is not UTF-8"):
        policyfile.decode_upload(b"version: 1\n\xff\n")
    assert policyfile.decode_upload("\ufeffversion: 1".encode()) == "version: 1"


def test_the_format_is_guessed_from_the_name_or_the_text() -> None:
    assert policyfile.guess_format("{}", "") == "json"
    assert policyfile.guess_format("{}", "p.yaml") == "yaml"
    assert policyfile.guess_format("version: 1", "p.JSON") == "json"
    assert policyfile.guess_format("version: 1") == "yaml"


# --- commands --------------------------------------------------------------------------------------------


def test_export_rules_prints_the_file(team_a, admin) -> None:
    seed(team_a, admin)
    out = io.StringIO()
    call_command("export_rules", "alpha", "--format", "json", stdout=out)
    assert out.getvalue() == export_text(team_a, fmt="json")
    out = io.StringIO()
    call_command("export_rules", "alpha", stdout=out)
    assert out.getvalue() == export_text(team_a)
    with pytest.raises(CommandError, match="No team"):
        call_command("export_rules", "nope")


def test_import_rules_imports_a_file(team_a, tmp_path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    out = io.StringIO()
    call_command("import_rules", "alpha", str(path), stdout=out)
    assert "alpha: 3 rules added, 0 removed, 0 unchanged; mode review → whitelist." in out.getvalue()
    assert Rule.objects.filter(team=team_a).count() == 3
    assert AuditEvent.objects.get(kind="rules.imported").actor_id is None


def test_import_rules_refuses_a_bad_file_and_changes_nothing(team_a, admin, tmp_path) -> None:
    seed(team_a, admin)
    before = rows(team_a)
    path = tmp_path / "policy.yaml"
    path.write_text(ONE_BAD)
    err = io.StringIO()
    with pytest.raises(CommandError, match="was not imported"):
        call_command("import_rules", "alpha", str(path), stderr=err)
    assert f"{path}: line 13: rules[1].constraints[1].value" in err.getvalue()
    assert rows(team_a) == before


def test_import_rules_check_only_changes_nothing(team_a, tmp_path) -> None:
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(yaml.safe_load(GOOD)))
    out = io.StringIO()
    call_command("import_rules", "alpha", str(path), "--check", stdout=out)
    assert "3 rules, no problems" in out.getvalue()
    assert not Rule.objects.exists()
    with pytest.raises(CommandError, match="Cannot read"):
        call_command("import_rules", "alpha", str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize("fmt", ["yaml", "json"])
@pytest.mark.parametrize("odd", ["a\x85b", "\x7f", "\x9f", "\ufffe"])
def test_rules_with_odd_characters_survive_export_and_import(team_a, fmt: str, odd: str) -> None:
    from approvals.models import Rule
    from approvals.policyfile import export_text, import_text

    Rule.objects.create(team=team_a, effect="allow", server="files", tool="read", note=odd)
    text = export_text(team_a, fmt=fmt)
    import_text(team=team_a, text=text, fmt=fmt, by=None)
    assert Rule.objects.get(team=team_a).note == odd


# --- the result policy ------------------------------------------------------------------------------
def test_the_result_policy_is_exported_and_imported(team_a, team_b, admin) -> None:
    team_a.result_secrets = "block"
    team_a.save()
    document = yaml.safe_load(export_text(team_a))
    assert document["results"] == {"instructions": "mask", "secrets": "block", "personal_data": "pass"}
    result = import_text(team=team_b, text=export_text(team_a), by=admin)
    assert result.results_changed == ("secrets",) and "result policy changed (secrets)" in str(result)
    team_b.refresh_from_db()
    assert team_b.result_policy() == team_a.result_policy()
    event = AuditEvent.objects.filter(team=team_b, kind="rules.imported").latest("seq")
    assert event.data["results"] == {"secrets": {"before": "mask", "after": "block"}}


def test_a_file_without_results_leaves_the_policy_and_a_bad_one_is_refused_with_its_line(
    team_a, admin
) -> None:
    team_a.result_personal_data = "mask"
    team_a.save()
    import_text(team=team_a, text="version: 1\nrules: []\n", by=admin)
    team_a.refresh_from_db()
    assert team_a.result_personal_data == "mask"
    with pytest.raises(PolicyFileError) as refused:
        parse_policy("version: 1\nresults:\n  secrets: drop\n  tone: quiet\nrules: []\n")
    text = str(refused.value)
    assert "line 3" in text and "secrets" in text and "pass, mask, block" in text
    assert "line 4" in text and "tone" in text


@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_a_rules_result_policy_survives_export_and_import(team_a, team_b, admin, fmt: str) -> None:
    strict = rule_create(
        team=team_a, by=admin, effect="allow", server="files", tool="read_file", result_secrets="block"
    )
    rule_create(team=team_a, by=admin, effect="allow", server="files", tool="list")
    text = export_text(team_a, fmt=fmt)
    document = yaml.safe_load(text)  # JSON is YAML
    assert document["rules"][0]["results"] == {"secrets": "block"}
    assert "results" not in document["rules"][1]  # the team's policy: nothing written
    import_text(team=team_b, text=text, fmt=fmt, by=admin)
    imported = list(Rule.objects.filter(team=team_b).order_by("id"))
    assert [(r.tool, r.result_instructions, r.result_secrets, r.result_personal_data) for r in imported] == [
        ("read_file", "", "block", ""),
        ("list", "", "", ""),
    ]
    assert export_text(team_b, fmt=fmt).replace(team_b.slug, team_a.slug) == text
    # The same rule with another result policy is another rule: it is replaced, not kept.
    changed = text.replace("block", "mask")
    result = import_text(team=team_a, text=changed, fmt=fmt, by=admin)
    assert (result.added, result.removed, result.kept) == (1, 1, 1)
    assert not Rule.objects.filter(pk=strict.pk).exists()
    assert Rule.objects.get(team=team_a, tool="read_file").result_secrets == "mask"


def test_a_rules_bad_result_policy_is_refused_with_its_line() -> None:
    text = """\
version: 1
rules:
  - effect: allow
    server: files
    tool: read_file
    results:
      secrets: drop
      tone: quiet
  - effect: deny
    server: files
    tool: "*"
    results: {instructions: block}
  - effect: allow
    server: files
    tool: list
    results: block
"""
    with pytest.raises(PolicyFileError) as caught:
        parse_policy(text)
    actions = ", ".join(Team.ResultAction.values)
    assert [str(p) for p in caught.value.problems] == [
        f"line 7: rules[0].results.secrets: must be one of: {actions}",
        "line 8: rules[0].results.tone: unknown key (expected: instructions, secrets, personal_data)",
        "line 12: rules[1].results.instructions: a deny rule runs no call, so it has no result: leave it to "
        "the team",
        "line 16: rules[2].results: must be a mapping with instructions, secrets, personal_data",
    ]
