"""Every script: --help works, nothing runs at import, bad paths give exit 2 and one line."""
from __future__ import annotations

import importlib
import os
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


TORCH_FREE = ["download_data", "drew_fig", "make_train_dataset_300", "make_train_dataset_500"]
HELP_WITHOUT_TORCH = TORCH_FREE + ["prediction", "train", "features_extract"]


def _heavy_modules_after(code: str) -> list[str]:
    probe = code + "\nimport sys\nprint(' '.join(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")[-2].split()


@pytest.mark.parametrize("name", TORCH_FREE)
def test_scripts_without_a_model_never_import_torch(name):
    assert _heavy_modules_after(f"import {name}") == []


@pytest.mark.parametrize("name", HELP_WITHOUT_TORCH)
def test_help_imports_no_torch(name):
    code = (f"import contextlib, io, {name}\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    try:\n        {name}.main(['--help'])\n    except SystemExit as exc:\n        assert exc.code == 0")
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize("name", SCRIPTS)
def test_version_is_the_package_version(name, capsys):
    from virnucpro import __version__

    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(name).main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"{name}.py (VirNucPro-FastESM) {__version__}"


ORIGINAL_STYLE_SCRIPT = '''
from units import *

# what the original scripts did with the star import
records = list(SeqIO.parse({reads!r}, "fasta"))
split_fasta_chunk({reads!r}, {chunks!r}, 300)
kept = 0
for record in tqdm(SeqIO.parse({chunks!r}, "fasta"), disable=True):
    for seqid, nucleotide, protein in identify_seq(record.id, str(record.seq).upper()) or []:
        kept += bool(protein)
assert os.path.getsize({chunks!r}) > 0 and kept > 0
assert isinstance(torch.zeros(1), torch.Tensor) and callable(AutoTokenizer.from_pretrained)
assert callable(AutoModel.from_pretrained)
for name in ("create_refseq_pro_list", "reverse_complement", "translate_dna", "seq_in_reflist",
             "process_record", "extract_DNABERT_S", "extract_esm", "split_fasta_file", "merge_data",
             "MLPClassifier"):
    assert callable(globals()[name]), name
print(len(records), kept)
'''


@pytest.mark.slow  # importing transformers' Auto classes takes 5-10 s of CPU
def test_star_import_of_units_gives_the_original_names(tmp_path, golden_dir):
    script = tmp_path / "original_style.py"
    script.write_text(ORIGINAL_STYLE_SCRIPT.format(reads=str(golden_dir / "reads.fa"),
                                                   chunks=str(tmp_path / "chunks.fa")))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    n_records, kept = map(int, done.stdout.split())
    from Bio import SeqIO

    assert n_records == len(list(SeqIO.parse(golden_dir / "reads.fa", "fasta"))) > 0 and kept > 0
    assert (tmp_path / "chunks.fa").read_bytes() == (golden_dir / "predict_300" / "reads_chunked300.fa").read_bytes()
