"""The library never imports streamlit; the CLI is installed and fast to start."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import skin_core


def test_importing_all_of_skin_core_does_not_import_streamlit():
    code = (
        "import importlib, pkgutil, sys, skin_core\n"
        "for m in pkgutil.walk_packages(skin_core.__path__, 'skin_core.'):\n"
        "    if m.name != 'skin_core.__main__':\n"
        "        importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k == 'streamlit' or k.startswith('streamlit.'))\n"
        "print(len(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(skin_core.__path__, "skin_core.")
             if m.name != "skin_core.__main__"]
    assert "skin_core.data.images" in names
    for name in names:
        importlib.import_module(name)


def test_cli_help_lists_verbs_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "skin_core", "--help"], capture_output=True,
                         text=True, check=True)
    assert "data" in out.stdout and "demo-data" in out.stdout


def test_cli_help_does_not_import_torch():
    code = ("import sys\nfrom skin_core.cli import build_parser\nbuild_parser()\n"
            "print('torch' in sys.modules, 'lightgbm' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
