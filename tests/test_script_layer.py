"""The scripts are a thin command layer: parser, one frozen request, the library's engine, exit codes.

Every top-level script ends at roughly ``build_parser`` + ``build_request`` + ``main``: no function
of a script takes the parsed command line (``args``) except ``build_request`` and the run wrappers,
which only hand it to ``build_request``; every script is short; every request is a frozen value of
the library, built from the command line alone.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(REPO.glob("*.py"))
MAX_SCRIPT_LINES = 150
#: Each script that builds a request, with a command line it accepts (nothing is run or read).
MINIMAL_ARGV = {
    "prediction": ["in.fa", "300", "out"],
    "evaluate": ["--model", "m.pth", "--outdir", "eval"],
    "features_extract": [],
    "train": [],
    "make_train_dataset_300": [],
    "download_data": [],
    "build_model": [],
    "convert_checkpoint": ["300_model.pth", "300_model_esm2_3b.pth", "--chunk-size", "300"],
    "check_models": [],
    "drew_fig": ["out/prediction_results.txt"],
}


def _argument_names(function: ast.FunctionDef) -> set[str]:
    arguments = function.args
    return {a.arg for a in (*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs)}


def _uses_args_beyond_build_request(function: ast.FunctionDef) -> bool:
    """True when ``args`` is used other than as the one argument of ``build_request(args)``."""
    handed_on = {id(node.args[0]) for node in ast.walk(function)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "build_request"
                 and len(node.args) == 1 and not node.keywords}
    return any(isinstance(node, ast.Name) and node.id == "args" and id(node) not in handed_on
               for node in ast.walk(function))


def script_functions_taking_args(path: Path) -> list[str]:
    """The module-level functions of a script that take ``args`` for more than handing it to build_request."""
    tree = ast.parse(path.read_text())
    return [f"{path.name}:{node.lineno} {node.name}" for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "build_request"
            and "args" in _argument_names(node) and _uses_args_beyond_build_request(node)]


def test_the_checks_see_a_function_that_works_on_args(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("def build_request(args):\n    return args.x\n\n"
                      "def run(args):\n    return go(build_request(args))\n\n"
                      "def output_paths(args, inputs):\n    return args.out\n\n"
                      "def sneaky(args):\n    return go(build_request(args), args.quiet)\n")
    assert script_functions_taking_args(script) == ["s.py:7 output_paths", "s.py:10 sneaky"]


def test_no_script_function_works_on_the_parsed_command_line():
    assert [found for path in SCRIPTS for found in script_functions_taking_args(path)] == []


def test_every_script_is_short():
    long = {path.name: n for path in SCRIPTS if (n := len(path.read_text().splitlines())) > MAX_SCRIPT_LINES}
    assert long == {}


def test_every_script_that_runs_an_engine_is_listed():
    """A new script gets a line in MINIMAL_ARGV, so its request is checked below."""
    builders = {path.stem for path in SCRIPTS if "def build_request(" in path.read_text()}
    assert builders == set(MINIMAL_ARGV)


@pytest.mark.parametrize("name", sorted(MINIMAL_ARGV))
def test_each_request_is_a_frozen_library_value(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is read or written: the request is only built
    script = importlib.import_module(name)
    request = script.build_request(script.build_parser().parse_args(MINIMAL_ARGV[name]))
    assert dataclasses.is_dataclass(request) and type(request).__module__.startswith("virnucpro.")
    assert type(request).__dataclass_params__.frozen
    first = dataclasses.fields(request)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(request, first, getattr(request, first))
    assert list(tmp_path.iterdir()) == []
