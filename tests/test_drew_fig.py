"""drew_fig.py: plot from prediction_results.txt (+ prediction_summary.tsv)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import drew_fig
from virnucpro import plot, rundir
from virnucpro.errors import InputError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RESULTS = """Sequence_ID\tPrediction\tscore1\tscore2
seqA_chunk_1F1\tvirus\t0.1\t0.9
seqA_chunk_1R2\tothers\t0.7\t0.3
seqA_chunk_2F3\tothers\t0.8\t0.2
seqA_chunk_4R1\tvirus\t0.4\t0.6
odd_chunk_name_chunk_1F2\tothers\t0.55\t0.45
"""
SUMMARY = """Sequence_ID\tLength\tChunks\tScored_Chunks\tViral_Chunks\tViral_Fraction\tMax_Virus_Score\tMean_Virus_Score\tPrediction
seqA\t1000\t4\t3\t2\t0.6667\t0.9\t0.5667\tvirus
odd_chunk_name\t250\t1\t1\t0\t0\t0.45\t0.45\tothers
"""


@pytest.fixture
def outdir(tmp_path: Path) -> Path:
    (tmp_path / "prediction_results.txt").write_text(RESULTS)
    (tmp_path / "prediction_summary.tsv").write_text(SUMMARY)
    return tmp_path


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_png_next_to_results_with_inferred_chunk_size(outdir: Path) -> None:
    assert drew_fig.main([str(outdir / "prediction_results.txt"), "-q"]) == 0
    assert_png(outdir / "prediction.png")
    assert not [p for p in outdir.iterdir() if p.name.endswith(".tmp")]


def test_explicit_chunk_size_and_output_without_summary(outdir: Path) -> None:
    (outdir / "prediction_summary.tsv").unlink()
    target = outdir / "figs" / "mine.png"
    assert drew_fig.main([str(outdir / "prediction_results.txt"), "--chunk-size", "300",
                          "-o", str(target), "--max-sequences", "1", "-q"]) == 0
    assert_png(target)


def test_output_that_is_an_existing_directory(outdir: Path, tmp_path: Path) -> None:
    target = tmp_path / "figures"
    target.mkdir()
    assert drew_fig.main([str(outdir / "prediction_results.txt"), "-o", str(target), "-q"]) == 0
    assert_png(target / "prediction.png")


def test_golden_results_file(golden_dir: Path, tmp_path: Path) -> None:
    results = tmp_path / "prediction_results.txt"
    shutil.copyfile(golden_dir / "consensus" / "prediction_results.txt", results)
    assert drew_fig.main([str(results), "--chunk-size", "500", "--max-sequences", "8", "-q"]) == 0
    assert_png(tmp_path / "prediction.png")


def test_chunk_size_needed_without_summary(outdir: Path, capsys: pytest.CaptureFixture) -> None:
    (outdir / "prediction_summary.tsv").unlink()
    assert drew_fig.main([str(outdir / "prediction_results.txt"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--chunk-size" in err[0]
    assert not (outdir / "prediction.png").exists()


@pytest.mark.parametrize("bad_line", [
    "seqA_chunk_1\tvirus\t0.1\t0.9",        # no frame tag
    "seqA_chunk_1F1\tvirus\t0.1",           # missing column
    "seqA_chunk_1F1\tvirus\tabc\t0.9",      # not a number
    "seqA_chunk_1F7\tvirus\t0.1\t0.9",      # no such frame
])
def test_malformed_results_one_line_error(outdir: Path, bad_line: str, capsys: pytest.CaptureFixture) -> None:
    results = outdir / "prediction_results.txt"
    results.write_text(RESULTS + bad_line + "\n")
    assert drew_fig.main([str(results), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("drew_fig.py: error:") and "prediction_results.txt: line 7" in err[0]
    assert not (outdir / "prediction.png").exists()


def test_missing_results_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert drew_fig.main([str(tmp_path / "prediction_results.txt")]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("rows, expected", [
    ({"a": (1000, 4), "b": (601, 3)}, 300),
    ({"a": (2600, 6), "b": (501, 2)}, 500),
    ({"a": (120, 1), "b": (250, 1)}, 300),     # single chunks: any size >= 250 draws the same
    ({"a": (900, 3)}, 300),                    # 300..449 fit; 300 is the only usual size
    ({"a": (7, 7)}, 1),
])
def test_infer_chunk_size(rows: dict, expected: int) -> None:
    assert plot.infer_chunk_size(rows, Path("s.tsv")) == expected


@pytest.mark.parametrize("rows", [
    {"a": (550, 2)},                  # 275..549: both 300 and 500 fit
    {"a": (1000, 3)},                 # 334..499: no usual size
    {"a": (1000, 4), "b": (600, 1)},  # 250..333 and >= 600: nothing fits
])
def test_infer_chunk_size_ambiguous(rows: dict) -> None:
    with pytest.raises(InputError, match="--chunk-size"):
        plot.infer_chunk_size(rows, Path("s.tsv"))


def test_chunk_spans_follow_the_chunking() -> None:
    spans = plot.chunk_spans(4, 300, 1000)
    assert spans[0] == (0, 300) and spans[-1][1] == 1000 and len(spans) == 4
    assert plot.chunk_spans(2, 300, None) == [(0, 300), (300, 600)]


def _drawn_chunk_size(monkeypatch, argv: list[str]) -> int:
    seen = []
    monkeypatch.setattr(plot, "draw", lambda sequences, chunk_size, summary, output: seen.append(chunk_size))
    assert drew_fig.main(argv + ["-q"]) == 0
    return seen[0]


def _write_manifest(outdir: Path, content: dict) -> None:
    manifest = outdir / rundir.WORK_DIR_NAME / rundir.MANIFEST_NAME
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps(content))


def test_chunk_size_is_read_from_the_runs_manifest(outdir: Path, monkeypatch) -> None:
    results = str(outdir / "prediction_results.txt")
    assert _drawn_chunk_size(monkeypatch, [results]) == 300  # inferred from the summary
    (outdir / "prediction_summary.tsv").unlink()
    _write_manifest(outdir, {"chunk_size": 333, "finished": True})
    assert _drawn_chunk_size(monkeypatch, [results]) == 333  # the run's record, no summary needed
    assert _drawn_chunk_size(monkeypatch, [results, "--chunk-size", "500"]) == 500  # the flag wins


def test_unusable_manifest_falls_back_to_the_summary(outdir: Path, monkeypatch) -> None:
    _write_manifest(outdir, {"chunk_size": "three hundred"})
    assert _drawn_chunk_size(monkeypatch, [str(outdir / "prediction_results.txt")]) == 300
