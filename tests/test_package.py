"""The installable package: one version, one dependency list, every script shipped and reachable.

``pip install .`` gives a ``virnucpro`` command whose subcommands call the same ``main`` as
the flat scripts, and ships the scripts and ``units`` as modules (pyproject.toml).
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import __version__, commands

REPO = Path(__file__).resolve().parent.parent
DIST_NAME = "virnucpro-fastesm"

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

# conda-forge names in pixi.toml -> the PyPI names of requirements.txt
PIXI_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def _toml(name: str) -> dict:
    with open(REPO / name, "rb") as handle:
        return tomllib.load(handle)


def _py_modules() -> list[str]:
    return _toml("pyproject.toml")["tool"]["setuptools"]["py-modules"]


def _requirement_set(lines) -> set[tuple[str, str]]:
    """(canonical name, sorted specifiers) of each requirement."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found = set()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            found.add((canonicalize_name(req.name), ",".join(sorted(str(s) for s in req.specifier))))
    return found


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version(DIST_NAME)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------- the dispatcher, in-process


# The documented subcommands (README, "The package and the virnucpro command").
EXPECTED_COMMANDS = {"predict": "prediction", "train": "train", "features": "features_extract",
                     "make-dataset": "make_train_dataset_300", "make-dataset-500": "make_train_dataset_500",
                     "evaluate": "evaluate", "convert": "convert_checkpoint", "download": "download_data",
                     "build-model": "build_model", "check-models": "check_models", "plot": "drew_fig"}


def test_the_commands_are_the_documented_ones():
    assert {name: command.module for name, command in commands.COMMANDS.items()} == EXPECTED_COMMANDS


@pytest.mark.parametrize("name", sorted(EXPECTED_COMMANDS))
def test_every_command_runs_its_scripts_main(name, capsys):
    module_name = EXPECTED_COMMANDS[name]
    module = importlib.import_module(module_name)
    assert commands.script_main(name) is module.main
    with pytest.raises(SystemExit) as exit_info:
        commands.main([name, "--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{module_name}.py (VirNucPro-FastESM) {__version__}"


def test_make_dataset_500_is_the_500_script(capsys):
    with pytest.raises(SystemExit):
        commands.main(["make-dataset-500", "--help"])
    assert "(default: 500)" in " ".join(capsys.readouterr().out.split())


def test_a_commands_exit_code_and_message_are_the_scripts(tmp_path, capsys):
    missing = tmp_path / "missing.fa"
    code = commands.main(["predict", str(missing), "300", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(missing) in err
    assert err.startswith("prediction.py: error:")
    with pytest.raises(SystemExit) as exit_info:
        commands.main(["train", "--no-such-option"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("argv, code, stream, text", [
    ([], 2, "err", "virnucpro: error: a command is required"),
    (["predic"], 2, "err", "did you mean 'predict'?"),
    (["nonsense"], 2, "err", "unknown command 'nonsense'; commands: predict"),
    (["--version"], 0, "out", f"virnucpro (VirNucPro-FastESM) {__version__}"),
    (["--help"], 0, "out", "usage: virnucpro COMMAND"),
])
def test_dispatcher_usage(argv, code, stream, text, capsys):
    assert commands.main(argv) == code
    captured = capsys.readouterr()
    assert text in getattr(captured, stream)
    if code == 2:
        assert len(captured.err.strip().splitlines()) == 1 and captured.out == ""


def test_help_lists_every_command_and_its_script(capsys):
    assert commands.main(["-h"]) == 0
    out = capsys.readouterr().out
    for name, command in commands.COMMANDS.items():
        assert any(line.split()[:2] == [name, f"{command.module}.py"] for line in out.splitlines()), name


def test_a_missing_script_module_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(commands.COMMANDS, "ghost", commands.Command("no_such_script_module", "nothing"))
    assert commands.main(["ghost"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no_such_script_module is not installed" in err


@pytest.mark.parametrize("signal_error, code", [(KeyboardInterrupt, 130), ("terminated", 143)])
def test_a_signal_while_the_script_loads_is_one_line(signal_error, code, monkeypatch, capsys):
    from virnucpro import cli

    error = cli.Terminated() if signal_error == "terminated" else signal_error()

    def interrupted_import(name):
        raise error

    monkeypatch.setattr(commands, "script_main", interrupted_import)
    try:
        returned = commands.main(["predict", "in.fa", "300", "out"])
    except KeyboardInterrupt:
        pytest.fail("the interrupt escaped the dispatcher (a traceback, not one line)")
    assert returned == code
    assert capsys.readouterr().err == "virnucpro predict: interrupted\n"


def _modules_after(code: str, cwd: Path) -> tuple[str, list[str]]:
    probe = code + "\nimport sys\nprint(' '.join(m for m in ('torch', 'transformers', 'prediction') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    *out, last = done.stdout.split("\n")[:-1]
    return "\n".join(out), last.split()


def test_virnucpro_help_imports_no_script_and_no_torch():
    code = "from virnucpro import commands\nassert commands.main(['--help']) == 0"
    out, heavy = _modules_after(code, REPO)
    assert "predict" in out and heavy == []


def test_python_dash_m_virnucpro(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "virnucpro", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"virnucpro (VirNucPro-FastESM) {__version__}\n", done.stderr
    done = subprocess.run([sys.executable, "-m", "virnucpro", "predict", "--version"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"prediction.py (VirNucPro-FastESM) {__version__}\n", done.stderr


# ---------------------------------------------------------------- pyproject, pixi, requirements


def test_py_modules_name_every_top_level_script():
    scripts = {path.stem for path in REPO.glob("*.py")}
    assert sorted(_py_modules()) == sorted(scripts)


def test_every_script_has_a_command():
    assert sorted(c.module for c in commands.COMMANDS.values()) == sorted(set(_py_modules()) - {"units"})


def test_the_console_command_is_the_dispatcher():
    project = _toml("pyproject.toml")["project"]
    assert project["scripts"] == {"virnucpro": "virnucpro.commands:main"}
    assert project["name"] == DIST_NAME


def test_one_version():
    pyproject = _toml("pyproject.toml")
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "virnucpro.__version__"}
    assert _toml("pixi.toml")["workspace"]["version"] == __version__
    installed = _installed_version()
    if installed is not None:  # CI installs the package (pip install .) before the suite
        assert installed == __version__


def test_requirements_txt_is_pyproject_and_pixi():
    project = _toml("pyproject.toml")["project"]
    requirements = _requirement_set((REPO / "requirements.txt").read_text().splitlines())
    assert requirements == _requirement_set(project["dependencies"] + project["optional-dependencies"]["test"])
    pixi = {f"{PIXI_TO_PYPI.get(name, name)}{spec}" for name, spec in _toml("pixi.toml")["dependencies"].items()
            if name != "python"}
    assert requirements == _requirement_set(pixi)


def test_an_installed_command_runs_outside_the_repo(tmp_path):
    command = Path(sys.executable).parent / "virnucpro"
    if _installed_version() is None or not command.exists():
        pytest.skip("the package is not installed in this environment (CI installs it)")
    done = subprocess.run([str(command), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"virnucpro (VirNucPro-FastESM) {__version__}\n", done.stderr


# ---------------------------------------------------------------- a real install


def _source_copy(dest: Path) -> Path:
    """What pip needs of the repository (pip builds in the source tree: keep the clone clean)."""
    dest.mkdir()
    for name in ["pyproject.toml", "README.md", *(f"{module}.py" for module in _py_modules())]:
        shutil.copy2(REPO / name, dest / name)
    shutil.copytree(REPO / "virnucpro", dest / "virnucpro", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.mark.slow
def test_pip_install_gives_the_command_and_the_modules(tmp_path):
    source, target, elsewhere = _source_copy(tmp_path / "src"), tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(source)],
                   check=True, capture_output=True, text=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)

    done = run(str(target / "bin" / "virnucpro"), "--version")
    assert done.returncode == 0 and done.stdout == f"virnucpro (VirNucPro-FastESM) {__version__}\n", done.stderr
    done = run(str(target / "bin" / "virnucpro"), "predict", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: prediction.py"), done.stderr
    done = run(str(target / "bin" / "virnucpro"), "predict", "--no-such-option")
    assert done.returncode == 2 and done.stderr.startswith("prediction.py: error:")
    code = ("import importlib.metadata, json, prediction, units, virnucpro\n"
            f"print(json.dumps([prediction.__file__, units.__file__, virnucpro.__file__, "
            f"importlib.metadata.version('{DIST_NAME}')]))")
    done = run(sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    *files, version = json.loads(done.stdout)
    assert all(Path(f).resolve().is_relative_to(target.resolve()) for f in files), files
    assert version == __version__
