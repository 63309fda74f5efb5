"""The package surface: ``analysis/`` is ``melbo_tl.analysis`` only, in a checkout and in a wheel.

A user's own ``analysis.py`` in the working folder must break nothing (it used to shadow the
top-level ``analysis`` package every command imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
USER_MODULE = "raise RuntimeError('the user analysis.py was imported by melbo_tl')\n"


def _python(code: str, cwd: Path, pythonpath: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_packages_listed_in_pyproject_are_every_package_folder():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "melbo_tl").rglob("__init__.py")}
    assert "melbo_tl.analysis" in listed and "analysis" not in listed
    assert listed - {"melbo_tl.analysis"} == found, "pyproject.toml [tool.setuptools] packages is out of date"


def test_a_users_analysis_py_in_the_working_folder_breaks_nothing(tmp_path):
    (tmp_path / "analysis.py").write_text(USER_MODULE)
    code = (
        "import melbo_tl.analysis.similarity as s, melbo_tl.analysis.run_analysis, melbo_tl.cli;"
        "print(s.__name__, s.__file__)"
    )
    done = _python(code, tmp_path)
    assert done.returncode == 0, done.stderr
    name, path = done.stdout.split()
    assert name == "melbo_tl.analysis.similarity"
    assert Path(path) == ROOT / "analysis" / "similarity.py"
    assert "analysis" not in {m.split(".")[0] for m in _loaded_after(tmp_path, "import melbo_tl.analysis.names")}


def _loaded_after(cwd: Path, code: str) -> list[str]:
    done = _python(f"import sys; {code}; print(' '.join(sys.modules))", cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_a_bare_import_of_the_folder_is_refused_with_the_right_name():
    done = _python("import analysis", ROOT)
    assert done.returncode != 0
    assert "melbo_tl.analysis" in done.stderr


def test_the_wheel_ships_analysis_inside_the_package(tmp_path):
    pytest.importorskip("setuptools")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "melbo_tl/analysis/similarity.py" in names
    assert not [n for n in names if n.startswith("analysis/")]
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"
    work.mkdir()
    (work / "analysis.py").write_text(USER_MODULE)
    done = _python("import melbo_tl.analysis.names as n; print(n.__file__)", work, pythonpath=site)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).is_relative_to(site)
