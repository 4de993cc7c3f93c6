"""JUnit XML: one test case per gate, so CI systems show gates as tests."""
from __future__ import annotations

import xml.etree.ElementTree as ET


def render_junit(result) -> str:
    """Render the gates of ``result`` as a JUnit ``<testsuite>`` document."""
    gates = result.gates
    suite = ET.Element("testsuite", name="ganaudit", tests=str(len(gates)),
                       failures=str(sum(g["status"] == "fail" for g in gates)),
                       skipped=str(sum(g["status"] == "skipped" for g in gates)),
                       time=str(result.timings.get("total", 0)))
    for g in gates:
        case = ET.SubElement(suite, "testcase", classname="ganaudit.gates", name=g["name"], time="0")
        if g["status"] == "fail":
            ET.SubElement(case, "failure", message=g["message"], type="GateFailed").text = g.get("reason", "")
        elif g["status"] == "skipped":
            ET.SubElement(case, "skipped", message=g["message"])
        elif g["status"] == "warn":
            ET.SubElement(case, "system-out").text = f"WARNING: {g['message']}"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"
