"""`pip install .` ships the data pipeline: the atomic_data package, its console scripts and the
bundled demo dataset (offline: the wheel is built without build isolation or an index)."""
import configparser
import importlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from setuptools import find_packages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {
    "prism-data-convert": "atomic_data.convert:main",
    "prism-data-download-images": "atomic_data.download_images:main",
    "prism-data-extract-clip": "atomic_data.extract_clip:main",
    "prism-data-pipeline": "atomic_data.pipeline:main",
    "prism-data-build-ml100k-mm": "atomic_data.build_ml100k_mm:main",
    "prism-data-s3rec": "atomic_data.s3rec:main",
}
STEPS = ("convert", "download_images", "extract_clip", "pipeline")


def setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    return cfg


def console_scripts(text):
    scripts = {}
    for line in text.splitlines():
        if "=" in line:
            name, target = (part.strip() for part in line.split("=", 1))
            scripts[name] = target
    return scripts


def test_setup_cfg_finds_the_atomic_data_package():
    include = [p.strip() for p in setup_cfg()["options.packages.find"]["include"].split(",")]
    packages = find_packages(where=REPO, include=include)
    assert "atomic_data" in packages and "prism_recbole" in packages
    assert not any(p.split(".")[0] in ("tests", "benchmarks", "configs", "docs") for p in packages)


def test_console_scripts_are_declared_and_resolve_to_callables():
    scripts = console_scripts(setup_cfg()["options.entry_points"]["console_scripts"])
    assert scripts == SCRIPTS
    for name, target in scripts.items():
        module, func = target.split(":")
        if module == "atomic_data.s3rec" and importlib.util.find_spec(module) is None:
            continue  # reserved; the module is added separately
        assert callable(getattr(importlib.import_module(module), func)), name


@pytest.mark.parametrize("step", STEPS)
def test_help_names_the_console_script(step, monkeypatch, capsys):
    module = importlib.import_module(f"atomic_data.{step}")
    script = "prism-data-" + step.replace("_", "-")
    monkeypatch.setattr(sys, "argv", [os.path.join("venv", "bin", script), "--help"])
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {script} ")
    monkeypatch.setattr(sys, "argv", [module.__file__, "--help"])  # python -m atomic_data.STEP
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m atomic_data.{step} ")


def test_wheel_ships_atomic_data_scripts_and_demo_data(tmp_path):
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.tmp-*", "*.pyc")
    src.mkdir()
    for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(os.path.join(REPO, name), src / name)
    for package in ("prism_recbole", "atomic_data"):
        shutil.copytree(os.path.join(REPO, package), src / package, ignore=ignore)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(wheels), str(src)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = wheels.glob("prism_recbole-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(entry_points).decode()
        zf.extractall(tmp_path / "site")
    for module in ("__init__", "common", "tiny_clip", "build_ml100k_mm", *STEPS):
        assert f"atomic_data/{module}.py" in names
    for ext in ("inter", "item"):
        assert f"atomic_data/ml-100k-mm/ml-100k-mm.{ext}" in names
    assert not any(n.startswith("tests/") for n in names)
    assert console_scripts(text.split("[console_scripts]", 1)[1].split("[", 1)[0]) == SCRIPTS

    # from another folder, with only the wheel's files on the path
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "PYTHONNOUSERSITE": "1"}
    check = subprocess.run(
        [sys.executable, "-c",
         "import sys; sys.path = [p for p in sys.path if p not in ('', %r)]\n"
         "import atomic_data.convert as c; print(c.__file__)\n"
         "sys.argv = ['prism-data-convert', '--help']; c.main()" % REPO],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert check.returncode == 0, check.stderr
    first, usage = check.stdout.split("\n", 1)
    assert first.startswith(str(tmp_path / "site"))
    assert usage.startswith("usage: prism-data-convert ")
