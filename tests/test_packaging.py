"""A non-editable install (`pip install .`) carries the templates and profiles."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

from helpers import ROOT

from nlb_ndt.config.render import PROFILE_DIR, TEMPLATE_DIR


def test_wheel_install_finds_templates_and_profiles(tmp_path):
    """Verify that the wheel `pip install .` builds holds every template and profile, and
    that the package installed from it (not this checkout) lists and renders them."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, timeout=300,
                   cwd=tmp_path)
    (wheel,) = wheels.glob("nlb_ndt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in (TEMPLATE_DIR, PROFILE_DIR):
        for path in folder.iterdir():
            assert f"nlb_ndt/config/{folder.name}/{path.name}" in names, path.name

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    probe = ("import json, nlb_ndt; from nlb_ndt.config.render import template_names, "
             "load_profile, render_config; from nlb_ndt.paths import get_paths; "
             "print(json.dumps({'file': nlb_ndt.__file__, 'templates': template_names(), "
             "'profile': load_profile('aesmte3').name, "
             "'rendered': len(render_config('mc_maze', paths=get_paths())[0])}))")
    env = {**os.environ, "PYTHONPATH": str(site), "NLB_HOME": str(tmp_path / "home")}
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(out.stdout)
    assert found["file"].startswith(str(site))
    assert found["templates"] == sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))
    assert found["profile"] == "aesmte3" and found["rendered"] > 0
