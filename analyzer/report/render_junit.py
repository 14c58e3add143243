"""JUnit XML: what CI systems (GitLab, Jenkins, Azure, CircleCI) show as test results.

One <testsuite> per checkpoint; one <testcase> per finding, a <failure> when it is at or
above --fail-on and a passing case with the message as <system-out> below it; a
checkpoint without findings is one passing case. Written with xml.etree, so every
attribute and text is escaped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from .emit import EmitOptions, fails
from .model import Finding, Report, ReportSet

__all__ = ["JunitRenderer"]


class JunitRenderer:
    name = "junit"
    extension = ".xml"

    def render(self, results: ReportSet, options: EmitOptions = EmitOptions()) -> str:
        suites = ET.Element("testsuites", name=results.run.tool or "analyze")
        total = failures = 0
        for report in results.reports:
            suite = _suite(report, options.fail_on)
            suites.append(suite)
            total += int(suite.get("tests", "0"))
            failures += int(suite.get("failures", "0"))
        suites.set("tests", str(total))
        suites.set("failures", str(failures))
        suites.set("errors", "0")
        ET.indent(suites)
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def _suite(report: Report, fail_on: str) -> ET.Element:
    suite = ET.Element("testsuite", name=report.source.path)
    failing = 0
    for finding in report.findings:
        case = ET.SubElement(suite, "testcase", classname=report.source.path, name=_name(finding))
        text = finding.message + (f"\n\nFix: {finding.fix}" if finding.fix else "") + (f"\n\n{finding.fix_code}" if finding.fix_code else "")
        text = _lines(text)
        if fails(finding, fail_on):
            failing += 1
            failure = ET.SubElement(case, "failure", type=finding.kind, message=_lines(f"{finding.severity.value}: {finding.message}"))
            failure.text = text
        else:
            ET.SubElement(case, "system-out").text = f"{finding.severity.value}: {text}"
    if not report.findings:
        ET.SubElement(suite, "testcase", classname=report.source.path, name="no findings")
    suite.set("tests", str(max(1, len(report.findings))))
    suite.set("failures", str(failing))
    suite.set("errors", "0")
    suite.set("skipped", "0")
    return suite


def _name(finding: Finding) -> str:
    modules = ", ".join(finding.modules[:3]) + (f" (+{len(finding.modules) - 3})" if len(finding.modules) > 3 else "")
    return f"{finding.kind} [{modules}]" if modules else finding.kind


def _lines(text: str) -> str:
    """XML readers turn CR LF into LF anyway: say so in what is written."""
    return text.replace("\r\n", "\n").replace("\r", "\n")
