"""FASTQ input (reader, detection, prediction.py) and the viral FASTA of a prediction run."""
from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import pytest
import torch

import units
from virnucpro import assemble, outputs, rundir
from virnucpro.errors import InputError
from virnucpro.fasta import read_fasta
from virnucpro.fastq import FASTA, FASTQ, parse_fastq, read_sequences, sniff_format
from virnucpro.files import open_binary


def fastq_text(records: list[tuple[str, str]], wrap: int | None = None) -> str:
    """FASTQ records with fake qualities, sequence and quality wrapped at ``wrap`` when given."""
    out = []
    for header, seq in records:
        quality = "".join(random.Random(header).choice("!#5?@I") for _ in seq)
        step = wrap or max(1, len(seq))
        out.append(f"@{header}\n" + "".join(seq[i:i + step] + "\n" for i in range(0, len(seq), step))
                   + "+\n" + "".join(quality[i:i + step] + "\n" for i in range(0, len(seq), step)))
    return "".join(out)


def detect_format(path):
    with open_binary(path) as handle:
        return sniff_format(handle)


def read_fastq(path):
    with open_binary(path) as handle:
        return [record for _, record in parse_fastq(handle, path)]


def test_fastq_reads_like_the_same_fasta(tmp_path):
    records = [("r1 first read", "ACGTNacgt"), ("r2", "GGGCCCAAATTT" * 5), ("r3 x=@y", "A")]
    fq = tmp_path / "reads.fq"
    fq.write_text("\n" + fastq_text(records[:1]) + fastq_text(records[1:], wrap=7) + "\n\n")
    fa = tmp_path / "reads.fa"
    fa.write_text("".join(f">{h}\n{s}\n" for h, s in records))
    assert detect_format(fq) == FASTQ and detect_format(fa) == FASTA
    got = list(read_sequences(fq))
    assert got == list(read_fasta(fa)) == list(read_fastq(fq))
    assert [r.description for r in got] == ["r1 first read", "r2", "r3 x=@y"]
    gz = tmp_path / "reads.fastq.gz"
    gz.write_bytes(gzip.compress(fq.read_bytes()))
    assert detect_format(gz) == FASTQ and list(read_sequences(gz)) == got
    # a quality line starting with '@' is a quality line, not a header
    tricky = tmp_path / "tricky.fq"
    tricky.write_text("@a\nACGT\n+a\n@III\n@b\nAC\n+\nII\n")
    assert [(r.id, r.seq) for r in read_sequences(tricky)] == [("a", "ACGT"), ("b", "AC")]


MALFORMED = {
    "missing_plus": ("@r1\nACGT\nIIII\n@r2\nACGT\n+\nIIII\n", "'r1'", "no '+' line"),
    "quality_too_short": ("@r1\nACGT\n+\nIIII\n@r2\nACGTA\n+\nIIII\n@r3\nAC\n+\nII\n", "'r2'",
                          "quality characters for 5 bases"),
    "quality_too_long": ("@r1\nACGT\n+\nIIIII\n", "'r1'", "5 quality characters for 4 bases"),
    "truncated": ("@r1\nACGT\n+\nIIII\n@r2\nACGTACGT\n+\nIII", "'r2'", "truncated"),
    "truncated_no_plus": ("@r1\nACGT\n+\nIIII\n@r2\nACGT\n", "'r2'", "truncated"),
    "plus_names_other": ("@r1\nACGT\n+r9\nIIII\n", "'r1'", "names another record"),
    "not_a_header": ("@r1\nACGT\n+\nIIII\nACGT\n", "line 5", "expected a FASTQ record header"),
    "protein": ("@p1\nMKVLQW\n+\nIIIIII\n", "'p1'", "protein"),
    "duplicate": ("@r1\nACGT\n+\nIIII\n@r1\nACGT\n+\nIIII\n", "'r1'", "duplicate"),
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_fastq_names_file_and_record(tmp_path, kind):
    text, record, message = MALFORMED[kind]
    path = tmp_path / f"{kind}.fq"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        list(read_sequences(path))
    assert str(path) in str(err.value) and record in str(err.value) and message in str(err.value)


def test_malformed_fastq_exits_2_in_prediction(run, tmp_path, capsys):
    path = tmp_path / "bad.fastq.gz"
    path.write_bytes(gzip.compress(MALFORMED["quality_too_short"][0].encode()))
    assert run(path, 300, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "'r2'" in err
    assert not (tmp_path / "out" / rundir.RESULTS_NAME).exists()


def test_duplicate_fastq_ids_exit_2_in_prediction(run, tmp_path, capsys):
    path = tmp_path / "dup.fq"
    path.write_text(fastq_text([("r1", "ACGT" * 80), ("r2", "ACGA" * 80), ("r1 again", "ACGG" * 80)]))
    assert run(path, 300, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "duplicate" in err and "'r1'" in err


def _records_of(path: Path) -> list[tuple[str, str]]:
    return [(r.description, r.seq) for r in read_fasta(path, alphabet=None, check_duplicates=False,
                                                                 allow_empty=True)]


@pytest.mark.parametrize("shard_size", ["10000", "7"])
def test_prediction_on_fastq_gz_equals_fasta(run, tmp_path, golden_dir, shard_size):
    records = _records_of(golden_dir / "reads.fa")
    fasta = tmp_path / "reads.fa"
    shutil.copy(golden_dir / "reads.fa", fasta)
    fastq = tmp_path / "reads.fastq.gz"
    fastq.write_bytes(gzip.compress(fastq_text(records, wrap=50).encode()))
    assert run(fasta, 300, tmp_path / "fa", "--shard-size", shard_size) == 0
    assert run(fastq, 300, tmp_path / "fq", "--shard-size", shard_size) == 0  # shards read back at their offsets
    for a in sorted(p for p in (tmp_path / "fa").iterdir() if p.is_file()):
        assert (tmp_path / "fq" / a.name).read_bytes() == a.read_bytes(), a.name


@pytest.fixture()
def viral_checkpoint(tmp_path, checkpoint_300):
    """The test classifier with its output biased so that every scored frame is viral."""
    model, meta = units.load_checkpoint(checkpoint_300)
    with torch.no_grad():
        model.output_layer.bias.copy_(torch.tensor([-50.0, 50.0]))
    path = tmp_path / "all_viral.pth"
    units.save_checkpoint(path, model, dna_model=meta["dna_model"], dna_dim=meta["dna_dim"],
                          protein_model=meta["protein_model"], protein_dim=meta["protein_dim"], chunk_size=300)
    return path


def test_viral_sequences_fasta(run, tmp_path, golden_dir, viral_checkpoint):
    reads = tmp_path / "reads.fa"
    longest = max(_records_of(golden_dir / "reads.fa"), key=lambda r: len(r[1]))
    extra = [("lower case viral read", longest[1].lower())]
    reads.write_text(golden_dir.joinpath("reads.fa").read_text()
                     + "".join(f">{h}\n{s}\n" for h, s in extra))
    out = tmp_path / "out"
    assert run(reads, 300, out, model=viral_checkpoint) == 0
    summary = [line.split("\t") for line in (out / rundir.SUMMARY_NAME).read_text().splitlines()[1:]]
    called = {row[0] for row in summary if row[-1] == "virus"}
    assert called and any(row[-1] == "no_call" for row in summary)  # not everything is viral
    expected = [(d, s) for d, s in _records_of(reads) if d.split(None, 1)[0] in called]
    assert _records_of(out / rundir.VIRAL_FASTA_NAME) == expected
    assert expected[-1] == extra[0]  # header description and letter case kept


def test_viral_fasta_holds_one_record_at_a_time(tmp_path, monkeypatch):
    import weakref

    from virnucpro import runstate

    n = 200
    reads = tmp_path / "reads.fa"
    reads.write_text("".join(f">r{k} read {k}\n{'ACGT' * 30}\n" for k in range(n)))
    summary = tmp_path / rundir.SUMMARY_NAME
    summary.write_text(outputs.header_line(outputs.SUMMARY_COLUMNS) + "".join(
        f"r{k}\t120\t1\t1\t1\t1.0000\t0.9\t0.9\t{'virus' if k % 3 else 'others'}\n" for k in range(n)))
    alive: weakref.WeakSet = weakref.WeakSet()
    most = [0]
    real = assemble.read_sequences

    def counting(*args, **kwargs):
        for record in real(*args, **kwargs):
            alive.add(record)
            most[0] = max(most[0], len(alive))
            yield record

    monkeypatch.setattr(assemble, "read_sequences", counting)
    target = tmp_path / rundir.VIRAL_FASTA_NAME
    assert assemble.write_viral_sequences(reads, summary, target) == sum(1 for k in range(n) if k % 3)
    assert most[0] <= 3  # streamed: records are not collected in memory
    assert _records_of(target)[0] == ("r1 read 1", "ACGT" * 30)
    summary.write_text(summary.read_text().replace("r7\t", "r70000\t"))
    with pytest.raises(runstate.VirNucProError, match="does not match"):
        assemble.write_viral_sequences(reads, summary, target)


def test_piped_fastq_gz_equals_fasta(run, tmp_path, golden_dir, viral_checkpoint):
    import os
    import threading

    records = _records_of(golden_dir / "reads.fa")
    data = gzip.compress(fastq_text(records, wrap=70).encode())
    fasta = tmp_path / "reads.fa"
    shutil.copy(golden_dir / "reads.fa", fasta)
    assert run(fasta, 300, tmp_path / "fa", model=viral_checkpoint) == 0
    read_end, write_end = os.pipe()

    def feed() -> None:
        with os.fdopen(write_end, "wb") as handle:
            handle.write(data)

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        assert run(Path(f"/dev/fd/{read_end}"), 300, tmp_path / "fq", model=viral_checkpoint) == 0
    finally:
        feeder.join(timeout=30)
        os.close(read_end)
    viral = (tmp_path / "fa" / rundir.VIRAL_FASTA_NAME).read_bytes()
    assert viral and (tmp_path / "fq" / rundir.VIRAL_FASTA_NAME).read_bytes() == viral  # read from the spool
    assert (tmp_path / "fq" / rundir.SUMMARY_NAME).read_bytes() == (tmp_path / "fa" / rundir.SUMMARY_NAME).read_bytes()
