"""make_train_dataset_300.py / _500.py refuse bad inputs before long work and never keep an empty dataset."""
from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

import pytest

import make_train_dataset_300
import make_train_dataset_500

VIRAL_FNA, VIRAL_GBFF = "viral.1.1.genomic.fna.gz", "viral.1.genomic.gbff.gz"
OUTPUT_NAMES = ("viral.1.1.identified_nucleotide.fa", "viral.1.1.identified_protein.fa",
                "bacteria.1.1.identified_nucleotide.fa", "bacteria.1.1.identified_protein.fa")
PROTEIN_FASTA = b">p1 a protein\nMKLVVAAGGTTQQWWEFIL\n>p2\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n"


@pytest.fixture
def train_dir(golden_dir: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    for source in sorted((golden_dir / "train_300" / "data").iterdir()):
        shutil.copyfile(source, data / source.name)
    return data


def run(data: Path, script=make_train_dataset_300, *extra: str) -> int:
    """Run a script on ``data``, quiet unless ``extra`` holds -v."""
    return script.main(["--data-dir", str(data), *(extra if "-v" in extra else ["-q", *extra])])


def one_error_line(capsys: pytest.CaptureFixture, prog: str = "make_train_dataset_300.py") -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), err
    return lines[0]


def leftovers(data: Path) -> list[str]:
    """Outputs and temporary files in the data folder."""
    return sorted(p.name for p in data.iterdir() if "identified" in p.name or p.name.endswith(".tmp"))


def assert_golden(data: Path, golden_dir: Path, names=OUTPUT_NAMES) -> None:
    for name in names:
        assert (data / name).read_bytes() == (golden_dir / "train_300" / name).read_bytes(), name


@pytest.mark.parametrize("script, prog", [(make_train_dataset_300, "make_train_dataset_300.py"),
                                          (make_train_dataset_500, "make_train_dataset_500.py")])
def test_protein_fasta_as_genome_is_refused_before_any_genome_and_the_fixed_rerun_remakes(
        train_dir, golden_dir, capsys, script, prog):
    good = (train_dir / VIRAL_FNA).read_bytes()
    (train_dir / VIRAL_FNA).write_bytes(gzip.compress(PROTEIN_FASTA))
    assert run(train_dir, script) == 2
    line = one_error_line(capsys, prog)
    assert VIRAL_FNA in line and "'p1'" in line and "protein" in line
    assert leftovers(train_dir) == []  # checked before the bacteria genome was processed: nothing written
    (train_dir / VIRAL_FNA).write_bytes(good)
    assert run(train_dir, script) == 0
    if script is make_train_dataset_300:
        assert_golden(train_dir, golden_dir)
    else:
        assert (train_dir / OUTPUT_NAMES[0]).stat().st_size > 0


def test_genbank_file_that_is_fasta_is_refused_before_any_genome(train_dir, capsys):
    fasta = gzip.decompress((train_dir / VIRAL_FNA).read_bytes())
    (train_dir / VIRAL_GBFF).write_bytes(gzip.compress(fasta))
    assert run(train_dir) == 2
    line = one_error_line(capsys)
    assert VIRAL_GBFF in line and "not a GenBank" in line
    assert leftovers(train_dir) == []


def test_genome_whose_records_are_not_annotated_writes_nothing_and_keeps_the_finished_genome(
        train_dir, golden_dir, capsys):
    fasta = gzip.decompress((train_dir / VIRAL_FNA).read_bytes()).replace(b">VIRAL", b">OTHER")
    (train_dir / VIRAL_FNA).write_bytes(gzip.compress(fasta))
    assert run(train_dir) == 2
    line = one_error_line(capsys)
    assert VIRAL_FNA in line and "'OTHER_000000.1'" in line and VIRAL_GBFF in line and "annotated" in line
    # the bacteria genome (processed first) is finished and kept; nothing at the viral output names
    assert leftovers(train_dir) == sorted(OUTPUT_NAMES[2:])
    assert_golden(train_dir, golden_dir, OUTPUT_NAMES[2:])


def test_genbank_without_translations_is_refused(train_dir, capsys):
    text = gzip.decompress((train_dir / VIRAL_GBFF).read_bytes()).decode()
    stripped = re.sub(r'\n {21}/translation="[^"]*"', "", text)
    assert "/translation" in text and "/translation" not in stripped
    (train_dir / VIRAL_GBFF).write_bytes(gzip.compress(stripped.encode()))
    assert run(train_dir) == 2
    line = one_error_line(capsys)
    assert VIRAL_GBFF in line and "GenBank record(s) has a CDS /translation" in line
    assert not (train_dir / OUTPUT_NAMES[0]).exists()


def test_malformed_genbank_is_one_line(train_dir, capsys):
    text = gzip.decompress((train_dir / VIRAL_GBFF).read_bytes()).decode()
    broken = "\n".join(line for line in text.splitlines() if "/translation" not in line) + "\n"
    (train_dir / VIRAL_GBFF).write_bytes(gzip.compress(broken.encode()))  # continuation lines left dangling
    assert run(train_dir) == 2
    assert VIRAL_GBFF in one_error_line(capsys)


@pytest.mark.parametrize("damage", ["empty", "truncated", "ids_differ", "protein_missing"])
def test_a_previous_empty_or_partial_pair_is_remade_not_kept(train_dir, golden_dir, capsys, damage):
    assert run(train_dir) == 0
    dna, protein = (train_dir / name for name in OUTPUT_NAMES[:2])
    if damage == "empty":
        dna.write_bytes(b"")
        protein.write_bytes(b"")
    elif damage == "truncated":  # an older run killed while writing: the last line cut short
        protein.write_bytes(protein.read_bytes()[:-7])
    elif damage == "ids_differ":
        protein.write_bytes(protein.read_bytes().replace(b"_chunk_1", b"_chunk_9", 1))
    else:
        protein.unlink()
    capsys.readouterr()
    assert run(train_dir, make_train_dataset_300, "-v") == 0
    err = capsys.readouterr().err
    assert "the existing outputs are not kept" in err and "remaking" in err
    assert err.count("well formed; skipped") == 1  # the bacteria pair only
    assert_golden(train_dir, golden_dir)


def test_a_well_formed_pair_is_skipped_after_the_check(train_dir, golden_dir, capsys):
    assert run(train_dir) == 0
    capsys.readouterr()
    assert run(train_dir, make_train_dataset_300, "-v") == 0
    assert capsys.readouterr().err.count("well formed; skipped") == 2
    assert_golden(train_dir, golden_dir)


def test_an_output_name_taken_by_a_folder_is_refused_before_any_genome(train_dir, capsys):
    (train_dir / OUTPUT_NAMES[1]).mkdir()
    assert run(train_dir) == 2
    line = one_error_line(capsys)
    assert OUTPUT_NAMES[1] in line and "not a regular file" in line
    assert leftovers(train_dir) == [OUTPUT_NAMES[1]]  # nothing made for the bacteria genome either


def test_an_empty_genome_is_refused(train_dir, capsys):
    (train_dir / VIRAL_FNA).write_bytes(gzip.compress(b""))
    assert run(train_dir) == 2
    assert VIRAL_FNA in one_error_line(capsys)
    assert leftovers(train_dir) == []
