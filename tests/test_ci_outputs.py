"""The formats CI systems read: SARIF 2.1.0 (validated against the official schema, vendored),
GitHub workflow commands (parsed back by the documented escaping), Markdown for a PR comment,
JUnit XML; and every format through one parametrized test of the one emitter interface."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
import torch
import torch.nn.utils.prune as prune

from analyzer import analyze
from analyzer.report.emit import FORMATS, EmitOptions, renderer
from analyzer.report.model import Finding, Report, ReportSet, RunInfo, Severity
from analyzer.report.render_github import escape_data, escape_property

from .models import SmallNet

SARIF_SCHEMA = Path(__file__).parent / "fixtures" / "sarif-schema-2.1.0.json"

#: A finding whose text holds every character the formats must escape.
TRICKY = Finding(
    kind="residual-mismatch",
    severity=Severity.ERROR,
    modules=["blocks.0,1:add", "head|out"],
    message="100% of a|b broke:\r\nline two, with `ticks` and <html> & *stars* _under_",
    evidence={"operand_channels": {"a": 48, "b": 64}},
    fix="Prune `a` and b together; see: 50% rule",
    fix_code="x = 1  # a | pipe\nprint('```')\n",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> ReportSet:
    folder = tmp_path_factory.mktemp("ci")
    torch.manual_seed(0)
    net = SmallNet().eval()
    clean = folder / "clean model,v1.pth"  # a comma in the file name: a property value to escape
    torch.save(net.state_dict(), clean)
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    masked = folder / "masked.pth"
    torch.save(net.state_dict(), masked)
    tricky = analyze(masked)
    tricky = dataclasses.replace(tricky, findings=[TRICKY, *tricky.findings])
    run = RunInfo(tool="analyze", distribution="prune-analyzer", version="9.9.9", command=["analyze", str(clean)], created="2026-01-02T03:04:05Z")
    return ReportSet([analyze(clean), analyze(masked), tricky], run=run)


def _all_findings(results: ReportSet) -> list[tuple[Report, Finding]]:
    return [(r, f) for r in results.reports for f in r.findings]


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_renders_every_report(results: ReportSet, name: str) -> None:
    """One interface: each renderer takes the same ReportSet and names every finding kind."""
    out = renderer(name).render(results, EmitOptions(fail_on="warning", width=100))
    assert isinstance(out, str) and out.endswith("\n")
    for report, finding in _all_findings(results):
        assert finding.kind in out, f"{name} lost {finding.kind}"
    if name != "github":  # annotations carry findings only
        assert "clean model,v1.pth" in out or "clean model%2Cv1.pth" in out


# -- SARIF -----------------------------------------------------------------------------


def test_sarif_validates_against_the_official_2_1_0_schema(results: ReportSet) -> None:
    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    log = json.loads(renderer("sarif").render(results))
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(log), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "analyze" and driver["version"] == "9.9.9"
    findings = _all_findings(results)
    assert len(run["results"]) == len(findings)
    rule_ids = [rule["id"] for rule in driver["rules"]]
    assert sorted(rule_ids) == sorted({f.kind for _, f in findings})
    levels = {"error": "error", "warning": "warning", "info": "note"}
    for result, (report, finding) in zip(run["results"], findings):
        assert result["ruleId"] == finding.kind and rule_ids[result["ruleIndex"]] == finding.kind
        assert result["level"] == levels[finding.severity.value]
        assert result["message"]["text"].startswith(finding.message)
        location = result["locations"][0]
        assert [loc["fullyQualifiedName"] for loc in location["logicalLocations"]] == finding.modules
        uri = location["physicalLocation"]["artifactLocation"]["uri"]
        assert uri.endswith(Path(report.source.path).name.replace(" ", "%20").replace(",", "%2C"))
    assert run["invocations"][0]["startTimeUtc"] == "2026-01-02T03:04:05Z"
    # The same finding keeps its fingerprint from run to run (kind, modules, file), whatever the message.
    again = json.loads(renderer("sarif").render(dataclasses.replace(results, reports=[
        dataclasses.replace(r, findings=[dataclasses.replace(f, message=f.message + " (changed)") for f in r.findings]) for r in results.reports
    ])))
    assert [r["partialFingerprints"] for r in again["runs"][0]["results"]] == [r["partialFingerprints"] for r in run["results"]]


def test_sarif_paths_under_the_working_directory_are_relative(results: ReportSet, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(results.reports[0].source.path).parent
    monkeypatch.chdir(folder)
    log = json.loads(renderer("sarif").render(results))
    artifact = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert artifact == {"uri": "masked.pth", "uriBaseId": "%SRCROOT%"} or artifact["uriBaseId"] == "%SRCROOT%"
    assert log["runs"][0]["originalUriBaseIds"]["%SRCROOT%"]["uri"] == folder.resolve().as_uri() + "/"


# -- GitHub workflow commands ------------------------------------------------------------

_COMMAND = re.compile(r"^::(error|warning|notice) ([^:]*)::(.*)$")


def _unescape(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%3A", ":").replace("%2C", ",").replace("%25", "%")


def test_github_annotations_parse_back(results: ReportSet) -> None:
    lines = renderer("github").render(results).splitlines()
    findings = _all_findings(results)
    assert len(lines) == len(findings)  # one command per finding, each on one line
    levels = {"error": "error", "warning": "warning", "info": "notice"}
    for line, (report, finding) in zip(lines, findings):
        match = _COMMAND.match(line)
        assert match, line
        level, properties, message = match.groups()
        assert level == levels[finding.severity.value]
        # Properties split on the unescaped commas only; every value reads back whole.
        values = dict(item.split("=", 1) for item in properties.split(","))
        assert _unescape(values["file"]) == report.source.path
        assert _unescape(values["title"]).startswith(finding.kind)
        assert all(m in _unescape(values["title"]) for m in finding.modules[:5])
        assert _unescape(message).startswith(finding.message) and f"Fix: {finding.fix}" in _unescape(message)
        assert "\n" not in message and "\r" not in message


def test_github_escaping_follows_the_workflow_command_rules() -> None:
    assert escape_data("50%\r\nnext: a, b") == "50%25%0D%0Anext: a, b"
    assert escape_property("50%\r\nnext: a, b") == "50%25%0D%0Anext%3A a%2C b"
    assert escape_data("%0A") == "%250A"  # an escape sequence in the text is not taken as one


# -- Markdown ----------------------------------------------------------------------------


def _cells(row: str) -> list[str]:
    """A GitHub table row split on its unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def test_markdown_reads_as_a_pull_request_comment(results: ReportSet) -> None:
    out = renderer("markdown").render(results, EmitOptions(fail_on="error"))
    lines = out.splitlines()
    assert lines[0] == "### analyze: 3 checkpoints — ❌ fails `--fail-on error` (1 error, 4 warnings)"
    # Tables: every row has as many cells as its header, whatever the messages hold.
    tables: list[list[str]] = []
    for line in lines:
        if line.startswith("|"):
            if tables and lines[lines.index(line) - 1].startswith("|") and tables[-1]:
                tables[-1].append(line)
            else:
                tables.append([line])
    assert len(tables) == 1 + 2  # the comparison, and one per checkpoint with findings
    for table in tables:
        width = len(_cells(table[0]))
        assert all(len(_cells(row)) == width for row in table), table
    comparison = tables[0]
    assert [_cells(row)[0] for row in comparison[2:]] == ["`clean model,v1.pth`", "`masked.pth`", "`masked.pth`"]
    tricky_row = next(row for row in tables[2] if "residual-mismatch" in row)
    assert "**fails**" in tricky_row and "\\|" in tricky_row and "<html>" not in tricky_row and "&lt;html&gt;" in tricky_row
    # Every fix's code is a fenced Python block that parses, inside a collapsed <details>.
    blocks = re.findall(r"^(`{3,})python\n(.*?)\n\1$", out, re.S | re.M)
    assert len(blocks) == sum(1 for _, f in _all_findings(results) if f.fix_code)
    for _, code in blocks:
        ast.parse(code)
    assert out.count("<details>") == out.count("</details>") == sum(1 for _, f in _all_findings(results) if f.fix or f.fix_code)
    assert "````python" in out  # the code holding ``` got a longer fence


def test_markdown_of_a_clean_run_says_it_passes(results: ReportSet) -> None:
    clean = ReportSet(results.reports[:1], run=results.run)
    out = renderer("markdown").render(clean)
    assert out.startswith("### analyze: `clean model,v1.pth` — ✅ passes `--fail-on error` (no findings)")
    assert "> No problems found." in out


# -- JUnit -------------------------------------------------------------------------------


def test_junit_xml_has_one_case_per_finding_and_failures_at_fail_on(results: ReportSet) -> None:
    for fail_on, failing in (("error", {"error"}), ("warning", {"error", "warning"}), ("never", set())):
        root = ET.fromstring(renderer("junit").render(results, EmitOptions(fail_on=fail_on)))
        assert root.tag == "testsuites"
        suites = root.findall("testsuite")
        assert [s.get("name") for s in suites] == [r.source.path for r in results.reports]
        expected_failures = sum(1 for _, f in _all_findings(results) if f.severity.value in failing)
        assert int(root.get("failures")) == expected_failures == len(root.findall(".//failure"))
        assert int(root.get("tests")) == sum(max(1, len(r.findings)) for r in results.reports) == len(root.findall(".//testcase"))
        for suite, report in zip(suites, results.reports):
            cases = suite.findall("testcase")
            assert int(suite.get("tests")) == len(cases)
            if not report.findings:
                assert [c.get("name") for c in cases] == ["no findings"] and cases[0].find("failure") is None
            for case, finding in zip(cases, report.findings):
                assert case.get("classname") == report.source.path
                assert case.get("name").startswith(finding.kind)
                failure = case.find("failure")
                assert (failure is not None) == (finding.severity.value in failing)
                if failure is not None:
                    assert failure.get("type") == finding.kind and finding.message.replace("\r\n", "\n") in failure.text


def test_cli_output_format_and_output_file(run_cli, tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = SmallNet().eval()
    prune.l1_unstructured(net.conv1, "weight", amount=0.5)
    path = tmp_path / "m.pth"
    torch.save(net.state_dict(), path)
    result = run_cli(path, "--output-format", "github", "--fail-on", "warning")
    assert result.code == 1
    assert [line.split(" ", 1)[0] for line in result.out.splitlines()] == ["::warning", "::warning"]
    target = tmp_path / "out.sarif"
    result = run_cli(path, "--output-format", "sarif", "--output-file", target)
    assert (result.code, result.out) == (0, "")
    assert json.loads(target.read_text())["runs"][0]["results"][0]["ruleId"] == "pruning-masks"
