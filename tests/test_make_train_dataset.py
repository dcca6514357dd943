"""make_train_dataset_300.py / _500.py against the golden outputs of the original."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

import make_train_dataset_300
import make_train_dataset_500

OUTPUT_NAMES = (
    "viral.1.1.identified_nucleotide.fa",
    "viral.1.1.identified_protein.fa",
    "bacteria.1.1.identified_nucleotide.fa",
    "bacteria.1.1.identified_protein.fa",
)


@pytest.fixture
def train_dir(golden_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the golden RefSeq-like data folder."""
    data = tmp_path / "data"
    data.mkdir()
    for source in sorted((golden_dir / "train_300" / "data").iterdir()):
        shutil.copyfile(source, data / source.name)
    return data


def assert_golden(data: Path, golden_dir: Path) -> None:
    for name in OUTPUT_NAMES:
        assert (data / name).read_bytes() == (golden_dir / "train_300" / name).read_bytes(), name


def test_matches_original_byte_for_byte(train_dir: Path, golden_dir: Path) -> None:
    assert make_train_dataset_300.main(["--data-dir", str(train_dir), "-q"]) == 0
    assert_golden(train_dir, golden_dir)
    # no unzipped or chunk files are left behind, no temporary files either
    left = sorted(p.name for p in train_dir.iterdir())
    assert left == sorted([*OUTPUT_NAMES, "viral.1.1.genomic.fna.gz", "viral.1.genomic.gbff.gz",
                           "bacteria.1.1.genomic.fna.gz", "bacteria.1.genomic.gbff.gz"])


def test_workers_give_the_same_output(train_dir: Path, golden_dir: Path) -> None:
    assert make_train_dataset_300.main(["--data-dir", str(train_dir), "--workers", "2", "-q"]) == 0
    assert_golden(train_dir, golden_dir)


KEPT_PAIR = (">V_chunk_1F1\nATGAAATTT\n", ">V_chunk_1F1\nMKF\n")  # a well-formed pair: checked, then kept


def test_existing_outputs_are_skipped_unless_forced(train_dir: Path, golden_dir: Path) -> None:
    for name, text in zip(OUTPUT_NAMES[:2], KEPT_PAIR):
        (train_dir / name).write_text(text)
    assert make_train_dataset_300.main(["--data-dir", str(train_dir), "-q"]) == 0
    assert (train_dir / OUTPUT_NAMES[0]).read_text() == KEPT_PAIR[0]
    assert (train_dir / OUTPUT_NAMES[2]).read_bytes() == \
        (golden_dir / "train_300" / OUTPUT_NAMES[2]).read_bytes()
    # only one of the pair present: remade
    (train_dir / OUTPUT_NAMES[1]).unlink()
    assert make_train_dataset_300.main(["--data-dir", str(train_dir), "-q"]) == 0
    assert_golden(train_dir, golden_dir)
    for name in OUTPUT_NAMES[:2]:
        (train_dir / name).write_text("stale\n")
    assert make_train_dataset_300.main(["--data-dir", str(train_dir), "--force", "-q"]) == 0
    assert_golden(train_dir, golden_dir)


def test_500_wrapper_uses_500_bp_chunks(train_dir: Path, golden_dir: Path) -> None:
    assert make_train_dataset_500.main(["--data-dir", str(train_dir), "-q"]) == 0
    text = (train_dir / OUTPUT_NAMES[0]).read_text()
    golden = (golden_dir / "train_300" / OUTPUT_NAMES[0]).read_text()
    assert text.startswith(">") and text != golden
    # the same as asking the 300 script for 500 bp chunks
    out300 = train_dir.parent / "again" / "data"
    shutil.copytree(train_dir, out300)
    for name in OUTPUT_NAMES:
        (out300 / name).unlink()
    assert make_train_dataset_300.main(["--data-dir", str(out300), "--chunk-size", "500", "-q"]) == 0
    for name in OUTPUT_NAMES:
        assert (out300 / name).read_bytes() == (train_dir / name).read_bytes()


def test_missing_data_dir_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "nowhere"
    assert make_train_dataset_300.main(["--data-dir", str(missing), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("make_train_dataset_300.py: error:") and "nowhere" in err[0]


def test_folder_without_genomes_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert make_train_dataset_300.main(["--data-dir", str(tmp_path), "-q"]) == 2
    assert "error:" in capsys.readouterr().err


def test_corrupt_genome_names_the_file(train_dir: Path, capsys: pytest.CaptureFixture) -> None:
    fna = train_dir / "viral.1.1.genomic.fna.gz"
    fna.write_bytes(gzip.compress(b">a\nACGT\n")[:-12])  # truncated gzip stream
    assert make_train_dataset_300.main(["--data-dir", str(train_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "viral.1.1.genomic.fna.gz" in err[0]
    assert not (train_dir / OUTPUT_NAMES[0]).exists()  # nothing half-written
    assert not [p for p in train_dir.iterdir() if p.name.endswith(".tmp")]


def test_bad_option_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        make_train_dataset_300.main(["--chunk-size", "0"])
    assert info.value.code == 2
