"""The engines live in the library: scripts only parse; one owner of every OUTDIR name; options passed on whole."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

import evaluate
import prediction
import units
from test_train import make_dataset
from virnucpro import classifier, files, predict, rundir
from virnucpro.options import ModelOptions

REPO = Path(__file__).resolve().parent.parent
LIBRARY = sorted((REPO / "virnucpro").glob("*.py"))
SCRIPTS = sorted(REPO.glob("*.py")) + sorted((REPO / "benchmarks").glob("*.py"))
#: Names under a prediction OUTDIR (as patterns): only virnucpro/rundir.py may spell them.
OUTDIR_NAMES = tuple(re.compile(pattern) for pattern in (
    r"\.virnucpro_work", r"\.virnucpro\.lock", r"manifest\.json", r"(?<![\w.])index\.json", r"input\.spool",
    r"dupcheck_", r"shard_(\d|\{|\*)", r"prediction_results\.txt", r"prediction_results_highestscore\.csv",
    r"prediction_summary\.tsv", r"viral_sequences\.fa", r"chunked\.fa", r"consensus\.tsv", r"(?<!_)summary\.tsv",
    r"(?<!_)results\.tsv"))


def code_strings(path: Path) -> list[tuple[int, str]]:
    """Every string of a module's code (f-strings with ``{}`` for their fields), docstrings left out
    (they document the names for users)."""
    tree = ast.parse(path.read_text())
    skip = {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            skip.update(id(part) for part in node.values)
            found.append((node.lineno, "".join(part.value if isinstance(part, ast.Constant) else "{}"
                                               for part in node.values)))
    return found + [(node.lineno, node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip]


def test_only_rundir_spells_the_names_under_outdir():
    spelled = [f"{path.relative_to(REPO)}:{line}: {name.pattern!r} in {text!r}"
               for path in LIBRARY + SCRIPTS if path.name != "rundir.py"
               for line, text in code_strings(path) for name in OUTDIR_NAMES if name.search(text)]
    assert spelled == []


def test_nothing_below_the_command_layer_takes_a_namespace():
    command_layer = {"cli.py", "commands.py"}
    users = [path.name for path in LIBRARY if path.name not in command_layer and "Namespace" in path.read_text()]
    assert users == []


def test_scripts_never_call_another_scripts_main():
    """evaluate.py and the benchmarks call the library, never ``prediction.main`` with a rebuilt argv.

    (make_train_dataset_500.py is make_train_dataset_300.py under another default, and the console
    command's dispatcher hands its own argv to the script it names.)"""
    allowed = {"make_train_dataset_500.py", "commands.py", "__main__.py"}
    calls = [f"{path.relative_to(REPO)}:{node.lineno}" for path in SCRIPTS + LIBRARY if path.name not in allowed
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "main"
             and isinstance(node.func.value, ast.Name) and node.func.value.id != "cli"]
    assert calls == []


def test_the_request_is_built_once_from_the_command_line(tmp_path):
    args = prediction.build_parser().parse_args(
        ["in.fa", "300", str(tmp_path / "out"), "--esm-model", "E", "--esm-revision", "r1", "--esm-loader", "native",
         "--dnabert-model", "D", "--dnabert-revision", "r2", "--device", "cpu", "--fp32", "--dna-precision", "tf32",
         "--compile", "--batch-tokens", "999", "--shard-size", "7", "--keep-features", "--force", "--strict-models"])
    request = prediction.build_request(args)
    assert request.models == ModelOptions(esm_model="E", esm_revision="r1", esm_loader="native", dnabert_model="D",
                                          dnabert_revision="r2", device="cpu", protein_precision="fp32",
                                          dna_precision="tf32", compile=True, batch_tokens=999)
    assert (request.shard_size, request.keep_features, request.force, request.strict_models) == (7, True, True, True)
    with pytest.raises(AttributeError):
        request.force = False  # frozen: no layer below changes what was asked
    resolved = ModelOptions().resolved_for("cpu")
    assert (resolved.protein_precision, resolved.dna_precision, resolved.batch_tokens) == ("fp32", "fp32", 16384)


def test_evaluate_passes_every_model_option_to_the_prediction_engine(tmp_path, monkeypatch, checkpoint_300):
    seen = []

    def stop(request):
        seen.append(request)
        raise units.VirNucProError("stopped here")

    monkeypatch.setattr(predict, "run_prediction", stop)
    viral, host = tmp_path / "v.fa", tmp_path / "h.fa"
    viral.write_text(">v1\n" + "ACGT" * 90 + "\n")
    host.write_text(">h1\n" + "TTGA" * 90 + "\n")
    options = ["--esm-model", "E", "--esm-revision", "r1", "--esm-loader", "native", "--dnabert-model", "D",
               "--dnabert-revision", "r2", "--device", "cpu", "--protein-precision", "bf16", "--dna-precision", "tf32",
               "--compile", "--batch-tokens", "999"]
    assert evaluate.main(["--viral", str(viral), "--host", str(host), "--model", str(checkpoint_300), "--outdir",
                          str(tmp_path / "eval"), "--strict-models", "--force", "-q", *options]) == 2
    assert len(seen) == 1
    assert seen[0].models == prediction.build_request(
        prediction.build_parser().parse_args(["x", "300", "o", *options])).models
    assert (seen[0].model, seen[0].strict_models, seen[0].force) == (checkpoint_300, True, True)


def test_a_run_reads_its_checkpoint_once(run, tmp_path, golden_dir, monkeypatch):
    reads, hashed = [], []
    real_read, real_hash = classifier.read_checkpoint, files.file_sha256
    monkeypatch.setattr(classifier, "read_checkpoint", lambda path: reads.append(Path(path)) or real_read(path))
    monkeypatch.setattr(files, "file_sha256", lambda path, *a: hashed.append(Path(path)) or real_hash(path, *a))
    from virnucpro import scoring

    monkeypatch.setattr(scoring, "read_checkpoint", classifier.read_checkpoint)
    assert run(golden_dir / "reads.fa", 300, tmp_path / "out", "--shard-size", "10") == 0
    assert len(reads) == 1 and reads[0].suffix == ".pth"
    assert not any(path.suffix == ".pth" for path in hashed)


def _features_with_revisions(root: Path, dna: str, protein: str) -> Path:
    return make_dataset(root, dna_model="zhihan1996/DNABERT-S", protein_model="Synthyra/FastESM2_650",
                        dna_model_revision=dna, protein_model_revision=protein)


def _checkpoint_with_revisions(path: Path, dna: str, protein: str) -> Path:
    torch.manual_seed(3)
    model = units.MLPClassifier(40, 16).eval()
    units.save_checkpoint(path, model, dna_model="zhihan1996/DNABERT-S", dna_dim=24,
                          protein_model="Synthyra/FastESM2_650", protein_dim=16, chunk_size=300,
                          dna_model_revision=dna, protein_model_revision=protein)
    return path


def test_evaluate_applies_the_provenance_rule_to_feature_files(tmp_path, capsys):
    """Features made by protein weights B, a classifier trained on A (same widths): a warning, or rc 2 under
    --strict-models; the report names the models of the features and of the checkpoint."""
    merge = _features_with_revisions(tmp_path / "data", "d" * 40, "b" * 40)
    checkpoint = _checkpoint_with_revisions(tmp_path / "m.pth", "d" * 40, "a" * 40)
    out = tmp_path / "eval"
    assert evaluate.main(["--features", str(merge), "--model", str(checkpoint), "--outdir", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "protein model" in warnings[0] and "aaaaaaa" in warnings[0] \
        and "bbbbbbb" in warnings[0] and "were made by" in warnings[0]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["input"]["made_by"]["protein_model_revision"] == "b" * 40
    assert report["models"]["m"]["trained_with"]["protein_model_revision"] == "a" * 40
    assert evaluate.main(["--features", str(merge), "--model", str(checkpoint), "--outdir", str(out),
                          "--strict-models", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--strict-models" in err
    same = _checkpoint_with_revisions(tmp_path / "same.pth", "d" * 40, "b" * 40)
    assert evaluate.main(["--features", str(merge), "--model", str(same), "--outdir", str(out),
                          "--strict-models"]) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_rundir_names_every_output_of_a_run(run, tmp_path, golden_dir):
    out = tmp_path / "out"
    assert run(golden_dir / "reads.fa", 300, out, "--keep-features", "--shard-size", "10") == 0
    names = rundir.RunDir(out, "reads", 300)
    made = sorted(p for p in out.rglob("*") if p.is_file())
    features = sorted(names.features_dir.glob(rundir.SHARD_FEATURES_GLOB))
    assert made == sorted([*names.final_outputs(), names.manifest, names.work.index, *features])
    assert features == [names.shard_features(k) for k in range(len(features))]
