"""The wheel ships the report templates, and the installed package finds them."""
from __future__ import annotations

import subprocess
import sys
import zipfile

from conftest import REPO


def test_wheel_contains_templates_and_renders_from_them(tmp_path):
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True)
    wheel = next(tmp_path.glob("ganaudit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "ganaudit/templates/report.html.j2" in names
    assert "ganaudit/templates/partials/leaks.html.j2" in names
    assert "ganaudit/schema/result.schema.json" in names
    assert not any(n.startswith(("tests/", "fixtures/")) for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import ganaudit.report.html as h; d = h.template_dirs(); "
             "print(d[0]); h.make_environment().get_template('report.html.j2')")
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == str(site / "ganaudit" / "templates")
