"""Every script: --help works, nothing runs at import, bad paths give exit 2 and one line."""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = ["prediction", "train", "features_extract", "make_train_dataset_300", "make_train_dataset_500",
           "drew_fig", "download_data", "convert_checkpoint", "evaluate"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_exits_0(name, capsys):
    module = importlib.import_module(name)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage:") and f"{name}.py" in out


def test_importing_scripts_runs_nothing():
    code = "import " + ", ".join(SCRIPTS) + "; print('imported')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "imported\n", done.stderr


MISSING_PATH_ARGS = {
    "prediction": lambda p: [str(p), "300", str(p.parent / "out")],
    "train": lambda p: ["--data-dir", str(p)],
    "features_extract": lambda p: ["--data-dir", str(p)],
    "make_train_dataset_300": lambda p: ["--data-dir", str(p)],
    "make_train_dataset_500": lambda p: ["--data-dir", str(p)],
    "drew_fig": lambda p: [str(p)],
    "convert_checkpoint": lambda p: [str(p), str(p.parent / "out.pth"), "--chunk-size", "300"],
    "evaluate": lambda p: ["--viral", str(p), "--host", str(p), "--model", str(p), "--outdir", str(p.parent / "e")],
}


@pytest.mark.parametrize("name", sorted(MISSING_PATH_ARGS))
def test_missing_input_path_exits_2_with_one_line(name, tmp_path, capsys):
    missing = tmp_path / "does_not_exist"
    code = importlib.import_module(name).main(MISSING_PATH_ARGS[name](missing) + ["-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and str(missing) in err and "Traceback" not in err


@pytest.mark.parametrize("name", SCRIPTS)
def test_unknown_option_exits_2_with_one_line(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(name).main(["--no-such-option"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"{name}.py: error:")
    assert "--no-such-option" in err or "required" in err  # positional arguments are checked first
