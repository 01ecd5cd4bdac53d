"""Rules in the browser: an admin writes a rule, tries it in the dry run, exports and imports the policy
file, or makes one from a held call with Always-Allow; the bridge's next call obeys it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import yaml

from approvals.models import AuditEvent, Rule
from approvals.services.rules import rule_create
from tests.e2e.conftest import ARTIFACTS, SignoffServer, TeamSetup, bridge, browser_login, text_of

SHOTS = Path("/tmp/shots")


async def test_admin_creates_a_constrained_rule_dry_runs_it_and_the_bridge_obeys(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)  # the team's admin
    await page.goto(signoff.url + "/rules/new/")
    await page.select_option("select[name=effect]", "allow")
    await page.fill("input[name=server]", "test")
    await page.fill("input[name=tool]", "write_file")
    await page.fill(
        "textarea[name=constraints]", json.dumps([{"path": "path", "op": "within", "value": "/srv/project"}])
    )
    await page.fill("input[name=note]", "project files only")
    await page.click("text=Create rule")
    await page.wait_for_selector(".flash-success")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.goto(signoff.url + "/rules/")
    await page.screenshot(path=str(ARTIFACTS / "rules-list.png"), full_page=True)
    assert "project files only" in await page.content()

    await page.goto(signoff.url + "/rules/dry-run/")
    await page.fill("input[name=server]", "test")
    await page.fill("input[name=tool]", "write_file")
    await page.fill(
        "textarea[name=arguments]", json.dumps({"path": "/srv/project/../../etc/x", "content": "y"})
    )
    await page.click("text=Try it")
    result = page.locator(".dry-run-result")
    await result.wait_for()
    assert await result.get_attribute("data-outcome") == "review"
    await page.screenshot(path=str(ARTIFACTS / "rules-dry-run.png"), full_page=True)

    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")
    ) as b:
        inside = await b.session.call_tool("write_file", {"path": "/srv/project/ok.txt", "content": "z"})
        outside = await b.session.call_tool(
            "write_file", {"path": "/srv/project/../../etc/x", "content": "y"}
        )
    assert text_of(inside) == "wrote 1 bytes to /srv/project/ok.txt"
    assert "still waiting for approval" in text_of(outside)
    rule = Rule.objects.get(team=team.team)
    assert rule.created_by == team.reviewer and rule.calls.count() == 1


# --- policy as code: export and import ---------------------------------------------------------------

BROKEN_POLICY = """\
# Three mistakes: nothing of this file may be imported.
version: 1
mode: whitelist
rules:
  - effect: allow
    server: test
    tool: echo
  - effect: allow
    server: test
    tool: write_file
    constraints:
      - {path: path, op: regex, value: '(a)\\1'}
  - effect: deny
    server: "*"
    tool: "*"
    colour: red
  - effect: maybe
    server: test
    tool: slow
"""


def line_of(text: str, needle: str) -> int:
    """The line (from 1) of the only line of ``text`` containing ``needle``."""
    (line,) = [number for number, content in enumerate(text.splitlines(), 1) if needle in content]
    return line


async def download(page: Any, link_text: str) -> tuple[str, str]:
    """Click a download link; the file's suggested name and its text."""
    async with page.expect_download() as info:
        await page.click(f"text={link_text}")
    file = await info.value
    return file.suggested_filename, Path(await file.path()).read_text(encoding="utf-8")


async def import_file(page: Any, server: SignoffServer, path: Path) -> None:
    """Upload a policy file on the import page, confirming the replacement the page asks about."""
    await page.goto(server.url + "/rules/import/")
    await page.set_input_files("input[name=file]", str(path))
    asked: list[str] = []

    async def confirm(dialog: Any) -> None:
        asked.append(dialog.message)
        await dialog.accept()

    page.once("dialog", confirm)
    async with page.expect_navigation():
        await page.click("button:has-text('Import')")
    assert len(asked) == 1 and asked[0].startswith("Replace all of")


def rule_rows(team: Any) -> list[tuple[int, str, str, str]]:
    return list(Rule.objects.filter(team=team).order_by("id").values_list("id", "effect", "server", "tool"))


async def test_admin_exports_the_policy_and_imports_files_all_or_nothing_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    admin = team.reviewer
    files = rule_create(
        team=team.team,
        by=admin,
        effect="allow",
        server="test",
        tool="write_file",
        constraints=[{"path": "path", "op": "within", "value": "/srv/project"}],
        note="project files",
        expires_at=datetime(2099, 1, 31, 9, 0, tzinfo=UTC),
    )
    harmless = rule_create(
        team=team.team, by=admin, effect="allow", server="test", tool="echo", note="harmless"
    )
    keys = rule_create(
        team=team.team,
        by=admin,
        effect="deny",
        server="*",
        tool="*",
        constraints=[{"path": "path", "op": "glob", "value": "*.key"}],
        note="no keys",
    )
    expected_rules = [
        {
            "effect": "allow",
            "server": "test",
            "tool": "write_file",
            "constraints": [{"path": "path", "op": "within", "value": "/srv/project"}],
            "note": "project files",
            "enabled": True,
            "expires_at": "2099-01-31T09:00:00Z",
        },
        {
            "effect": "allow",
            "server": "test",
            "tool": "echo",
            "constraints": [],
            "note": "harmless",
            "enabled": True,
        },
        {
            "effect": "deny",
            "server": "*",
            "tool": "*",
            "constraints": [{"path": "path", "op": "glob", "value": "*.key"}],
            "note": "no keys",
            "enabled": True,
        },
    ]
    before = rule_rows(team.team)
    page = await browser_login(browser, signoff, admin)
    await page.goto(signoff.url + "/rules/")

    # Export: both formats hold the same document, the rules in evaluation order.
    yaml_name, yaml_text = await download(page, "Export YAML")
    json_name, json_text = await download(page, "Export JSON")
    assert (yaml_name, json_name) == (
        f"signoff-rules-{team.team.slug}.yaml",
        f"signoff-rules-{team.team.slug}.json",
    )
    assert yaml_text.startswith("# Signoff policy file (schema version 1)")
    exported = yaml.safe_load(yaml_text)
    assert exported == json.loads(json_text)
    assert exported == {
        "version": 1,
        "team": team.team.slug,
        "mode": "review",
        "results": {"instructions": "mask", "secrets": "mask", "personal_data": "pass"},
        "rules": expected_rules,
        "limits": [],
    }

    async with bridge(
        tmp_path, url=signoff.url, token=team.raw_token, bridge_args=("--client-timeout", "1")
    ) as b:
        # Signoff compiles and keeps the team's rules now; every import below must replace them.
        assert text_of(await b.session.call_tool("echo", {"text": "before"})) == "before"

        # Importing what was just exported changes nothing, not even the rules' ids.
        exported_json = tmp_path / "exported.json"
        exported_json.write_text(json_text, encoding="utf-8")
        await import_file(page, signoff, exported_json)
        await page.wait_for_selector(".flash-success")
        assert "0 rules added, 0 removed, 3 unchanged" in await page.locator(".flash-success").text_content()
        assert rule_rows(team.team) == before

        # A file with mistakes: every problem with its line, and nothing changes.
        broken = tmp_path / "broken.yaml"
        broken.write_text(BROKEN_POLICY, encoding="utf-8")
        await import_file(page, signoff, broken)
        problems = page.locator(".import-problems")
        await problems.wait_for()
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "rules-import-error.png"), full_page=True)
        items = [text.strip() for text in await problems.locator("li").all_text_contents()]
        assert items == [
            f"line {line_of(BROKEN_POLICY, '(a)')}: rules[1].constraints[0].value: regex '(a)\\\\1': "
            "backreferences and octal escapes are not supported (at position 3)",
            f"line {line_of(BROKEN_POLICY, 'colour')}: rules[2].colour: unknown key "
            "(expected: effect, server, tool, constraints, note, results, enabled, expires_at)",
            f"line {line_of(BROKEN_POLICY, 'maybe')}: rules[3].effect: must be allow or deny",
        ]
        panel = " ".join((await problems.text_content() or "").split())
        assert "Nothing was imported: broken.yaml has 3 problems" in panel
        assert f"The rules, limits and mode of {team.team.name} are unchanged" in panel
        assert rule_rows(team.team) == before
        team.team.refresh_from_db()
        assert team.team.mode == "review"

        # A valid file: the rules equal to the file's are kept, the others go, the new ones come last.
        changed = dict(exported, mode="whitelist")
        changed["rules"] = [
            expected_rules[0],
            expected_rules[2],
            {
                "effect": "allow",
                "server": "test",
                "tool": "slow",
                "constraints": [{"path": "seconds", "op": "range", "value": {"max": 1}}],
            },
        ]
        policy = tmp_path / "policy.yaml"
        policy.write_text(yaml.safe_dump(changed, sort_keys=False), encoding="utf-8")
        await import_file(page, signoff, policy)
        await page.wait_for_selector(".flash-success")
        assert (
            "Imported policy.yaml: 1 rule added, 1 removed, 2 unchanged; mode review → whitelist"
            in await page.locator(".flash-success").text_content()
        )
        after = rule_rows(team.team)
        assert after[:2] == [before[0], before[2]], "kept rules keep their ids (and history)"
        assert after[2][1:] == ("allow", "test", "slow") and after[2][0] > keys.pk
        assert not Rule.objects.filter(pk=harmless.pk).exists()
        listed = await page.locator("tr[data-rule]").evaluate_all("rows => rows.map(r => r.dataset.rule)")
        assert listed == [str(pk) for pk, *_ in after]
        assert "Whitelist" in await page.locator(".rules-mode").text_content()
        await page.screenshot(path=str(SHOTS / "rules-after-import.png"), full_page=True)

        # The bridge's next calls obey the imported policy at once.
        echo = await b.session.call_tool("echo", {"text": "after"})
        slow = await b.session.call_tool("slow", {"seconds": 0})
        write = await b.session.call_tool("write_file", {"path": "/srv/project/a.txt", "content": "x"})
        key = await b.session.call_tool("write_file", {"path": "/srv/project/id.key", "content": "x"})
    assert echo.is_error and "only allows calls that a rule allows" in text_of(echo)
    assert text_of(slow) == "slept 0.0s"
    assert text_of(write) == "wrote 1 bytes to /srv/project/a.txt"
    assert key.is_error and f"denied by rule #{keys.pk}" in text_of(key)
    assert [c["tool"] for c in b.upstream_calls()] == ["echo", "slow", "write_file"]
    assert Rule.objects.get(pk=files.pk).calls.count() == 1

    imports = list(AuditEvent.objects.filter(team=team.team, kind="rules.imported").order_by("seq"))
    assert [(e.data["source"], len(e.data["added"]), len(e.data["removed"])) for e in imports] == [
        ("exported.json", 0, 0),
        ("policy.yaml", 1, 1),
    ], "the refused file left no trace but its page"
    assert imports[1].actor_id == admin.pk
    assert imports[1].data["removed"] == [
        {"rule": harmless.pk, "effect": "allow", "server": "test", "tool": "echo"}
    ]


# --- Always-Allow "this tool, any arguments" on a destructive tool -------------------------------------


async def test_always_allow_any_arguments_of_a_destructive_tool_asks_first_in_the_browser(
    signoff: SignoffServer, team: TeamSetup, browser, tmp_path
) -> None:
    page = await browser_login(browser, signoff, team.reviewer)
    await page.wait_for_selector("#socket-status[data-state=live]")
    asked: list[str] = []
    answers = iter([False, True])  # the reviewer first thinks better of it, then confirms

    async def on_dialog(dialog: Any) -> None:
        asked.append(dialog.message)
        await (dialog.accept() if next(answers) else dialog.dismiss())

    page.on("dialog", on_dialog)
    async with bridge(tmp_path, url=signoff.url, token=team.raw_token) as b:
        outcome: dict[str, Any] = {}
        async with anyio.create_task_group() as tasks:

            async def call() -> None:
                outcome["first"] = await b.session.call_tool(
                    "write_file", {"path": "/srv/project/a.txt", "content": "one"}
                )

            tasks.start_soon(call)
            card = page.locator("li.call")
            await card.wait_for()
            await card.locator("summary", has_text="Always allow").click()
            await card.locator("input[name=scope][value=tool]").check()
            assert await card.locator(".destructive-warning").is_visible()
            submit = card.get_by_role("button", name="Allow and create the rule")
            await submit.click()
            # Dismissed: the page sent nothing (it disables the buttons when it sends).
            assert asked == ["This tool may destroy data. Allow every call of it, with any arguments?"]
            assert await submit.is_enabled() and not Rule.objects.filter(team=team.team).exists()
            await submit.click()
            await card.wait_for(state="detached")
        other = await b.session.call_tool("write_file", {"path": "/elsewhere/b.txt", "content": "two"})
    assert len(asked) == 2
    assert text_of(outcome["first"]) == "wrote 3 bytes to /srv/project/a.txt"
    assert text_of(other) == "wrote 3 bytes to /elsewhere/b.txt"
    rule = Rule.objects.get(team=team.team)
    assert (rule.effect, rule.server, rule.tool, rule.constraints) == ("allow", "test", "write_file", [])
    assert rule.created_by == team.reviewer and rule.created_from_call is not None
