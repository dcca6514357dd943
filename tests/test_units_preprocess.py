"""units.py preprocessing: golden byte equality with the original, chunking, FASTA reading, batching."""
from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

import units


def identified_text(chunk_file: Path, refseq: dict[str, list[str]] | None = None) -> tuple[bytes, bytes]:
    """What the original writes for the kept frames of every chunk: (nucleotide, protein)."""
    nucleotide, protein = [], []
    for record in units.read_fasta(chunk_file, alphabet=None, check_duplicates=False):
        sequence = str(record.seq).upper()
        if refseq is None:
            frames = units.identify_seq(record.id, sequence)
        else:
            frames = units.identify_seq(record.id, sequence, refseq[record.id.split("_chunk_")[0]], istraindata=True)
        for item in frames or ():
            if item["protein"] != "":
                nucleotide.append(f">{item['seqid']}\n{item['nucleotide']}\n")
                protein.append(f">{item['seqid']}\n{item['protein']}\n")
    return "".join(nucleotide).encode(), "".join(protein).encode()


# ---------------------------------------------------------------------------
# golden outputs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [300, 500])
def test_split_fasta_chunk_matches_original(size, golden_dir, tmp_path):
    out = tmp_path / f"reads_chunked{size}.fa"
    count = units.split_fasta_chunk(golden_dir / "reads.fa", out, size)
    golden = (golden_dir / f"predict_{size}" / f"reads_chunked{size}.fa").read_bytes()
    assert out.read_bytes() == golden
    assert count == golden.count(b">")


@pytest.mark.parametrize("size", [300, 500])
def test_prediction_mode_identify_seq_matches_original(size, golden_dir, tmp_path):
    chunks = tmp_path / "chunks.fa"
    units.split_fasta_chunk(golden_dir / "reads.fa", chunks, size)
    nucleotide, protein = identified_text(chunks)
    assert nucleotide == (golden_dir / f"predict_{size}" / "reads_identified_nucleotide.fa").read_bytes()
    assert protein == (golden_dir / f"predict_{size}" / "reads_identified_protein.faa").read_bytes()


@pytest.mark.parametrize("name", ["viral", "bacteria"])
def test_training_mode_selection_matches_original(name, golden_dir, tmp_path):
    data = golden_dir / "train_300" / "data"
    refseq = units.create_refseq_pro_list(data / f"{name}.1.genomic.gbff.gz")
    assert refseq and all(isinstance(v, list) for v in refseq.values())
    chunks = tmp_path / "chunks.fa"
    units.split_fasta_chunk(data / f"{name}.1.1.genomic.fna.gz", chunks, 300)
    nucleotide, protein = identified_text(chunks, refseq)
    assert nucleotide == (golden_dir / "train_300" / f"{name}.1.1.identified_nucleotide.fa").read_bytes()
    assert protein == (golden_dir / "train_300" / f"{name}.1.1.identified_protein.fa").read_bytes()


def test_training_mode_rejects_ambiguous_bases_and_unannotated_frames():
    orf = "ATGGCTAAAGGTTTACGTGAA" * 3  # MAKGLRE x3, stop-free in frame 1
    protein = units.translate_dna(orf)[0]
    assert "*" not in protein
    assert units.identify_seq("s", orf[:30] + "N" + orf[31:], [protein], istraindata=True) is None
    kept = units.identify_seq("s", orf, [protein], istraindata=True)
    assert [item["seqid"] for item in kept] == ["sF1"]
    assert units.identify_seq("s", orf, ["WWWW"], istraindata=True) == []


def test_identify_seq_slices_and_ids():
    seq = "ATGAAACCCGGGTTTAAACCCGGG"  # 24 bp
    frames = units.identify_seq("x", seq)
    proteins = units.translate_dna(seq)
    by_id = {item["seqid"]: item for item in frames}
    revcomp = units.reverse_complement(seq)
    for num, protein in enumerate(proteins, start=1):
        tag = f"x{'F' if num <= 3 else 'R'}{num if num <= 3 else num - 3}"
        if "*" in protein:
            assert tag not in by_id
            continue
        item = by_id[tag]
        assert item["protein"] == protein
        expected = seq[num - 1:num + 3 * len(protein)] if num <= 3 else revcomp[num - 4:num - 3 + 3 * len(protein)]
        assert item["nucleotide"] == expected


def test_translate_drops_ambiguous_and_lowercase_codons():
    assert units.translate_dna("ATGNNNAAA")[0] == "MK"
    assert units.translate_dna("atgAAA")[0] == "K"
    assert units.reverse_complement("ACGTNacgtR") == "RacgtNACGT"


# ---------------------------------------------------------------------------
# chunking edge cases (SPEC section 1)
# ---------------------------------------------------------------------------


def _random_dna(length: int, seed: int = 1) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("ACGT") for _ in range(length))


def test_chunk_301_by_300_gives_300_and_151():
    seq = _random_dna(301)
    chunks = units.chunk_sequence(seq, 300)
    assert [len(c) for c in chunks] == [300, 151]
    assert chunks == [seq[:300], seq[150:]]


def test_chunk_2600_by_500_ends_at_2165():
    seq = _random_dna(2600)
    chunks = units.chunk_sequence(seq, 500)
    assert len(chunks) == 6
    assert chunks[-1] == seq[2165:2600]
    assert chunks[0] == seq[:500]
    assert all(c in seq for c in chunks)


@pytest.mark.parametrize("length", [1, 2, 299, 300])
def test_short_sequences_give_one_chunk(length):
    seq = _random_dna(length)
    assert units.chunk_sequence(seq, 300) == [seq]


def test_chunk_ids_and_wrapping(tmp_path):
    src = tmp_path / "in.fa"
    src.write_text(">rec1 some description\n" + _random_dna(700) + "\n>r2\nA\n")
    out = tmp_path / "out.fa"
    assert units.split_fasta_chunk(src, out, 300) == 4
    lines = out.read_text().splitlines()
    assert [line for line in lines if line.startswith(">")] == [
        ">rec1_chunk_1", ">rec1_chunk_2", ">rec1_chunk_3", ">r2_chunk_1"]
    assert max(len(line) for line in lines) == 60


# ---------------------------------------------------------------------------
# read_fasta
# ---------------------------------------------------------------------------


def _read(path: Path, **kwargs) -> list[units.FastaRecord]:
    return list(units.read_fasta(path, **kwargs))


@pytest.mark.parametrize("content, words", [
    (b"@read1\nACGT\n+\nIIII\n", ["FASTQ"]),
    (b"hello\n>r1\nACGT\n", ["before the first"]),
    (b">r1\nACGT\n>r2\n>r3\nAC\n", ["r2", "no sequence"]),
    (b">r1\nACGT\n>r1 again\nACGT\n", ["r1", "duplicate"]),
    (b">p1\nMKVLAEFWQ\n", ["p1", "protein"]),
    (b"\x00\x01\x02\x03\xff\xfe binary\x00junk\n", ["binary"]),
    (b"", ["no FASTA records"]),
    (b"\n\n", ["no FASTA records"]),
    (b">r1\nAC GT\n>r2\nACGT1\n", ["r2", "nucleotide"]),
])
def test_read_fasta_errors_name_file_and_record(tmp_path, content, words):
    path = tmp_path / "bad.fa"
    path.write_bytes(content)
    with pytest.raises(units.InputError) as err:
        _read(path)
    message = str(err.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_read_fasta_truncated_gzip(tmp_path):
    path = tmp_path / "reads.fa.gz"
    payload = gzip.compress(b"".join(b">r%d\n%s\n" % (i, _random_dna(500, i).encode()) for i in range(50)))
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(units.InputError) as err:
        _read(path)
    assert str(path) in str(err.value) and "gzip" in str(err.value)


def test_read_fasta_missing_file_and_directory(tmp_path):
    with pytest.raises(units.InputError, match="no such file"):
        _read(tmp_path / "nope.fa")
    with pytest.raises(units.InputError, match="directory"):
        _read(tmp_path)


def test_read_fasta_accepts_lowercase_iupac_crlf_and_gzip(tmp_path):
    text = ">a desc here\r\nacgtn\r\nRYKMSWBDHV\r\n>b\r\nAC-GT\r\n"
    plain = tmp_path / "x.fa"
    plain.write_bytes(text.encode())
    gz = tmp_path / "x.fa.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    for path in (plain, gz):
        records = _read(path)
        assert [(r.id, r.seq) for r in records] == [("a", "acgtnRYKMSWBDHV"), ("b", "AC-GT")]
        assert records[0].description == "a desc here"
    gz_named_plain = tmp_path / "plain_but_named.fa.gz"
    gz_named_plain.write_bytes(text.encode())
    assert len(_read(gz_named_plain)) == 2


def test_read_fasta_protein_alphabet(tmp_path):
    path = tmp_path / "p.faa"
    path.write_text(">p1\nmkvXUBZOJ*\n")
    assert _read(path, alphabet="protein")[0].seq == "mkvXUBZOJ*"
    path.write_text(">p1\nMK1V\n")
    with pytest.raises(units.InputError, match="p1"):
        _read(path, alphabet="protein")


def test_non_utf8_header_round_trips_through_split_fasta_chunk(tmp_path):
    src = tmp_path / "latin.fa"
    seq = _random_dna(350)
    src.write_bytes(b">caf\xe9_\xff|x desc \xfe\n" + seq.encode() + b"\n")
    records = _read(src)
    assert len(records) == 1
    out = tmp_path / "out.fa"
    units.split_fasta_chunk(src, out, 300)
    data = out.read_bytes()
    assert data.startswith(b">caf\xe9_\xff|x_chunk_1\n")
    assert b">caf\xe9_\xff|x_chunk_2\n" in data
    assert b"\xfe" not in data  # the description is not written


def test_split_fasta_chunk_accepts_gzip_input(tmp_path, golden_dir):
    gz = tmp_path / "reads.fa.gz"
    gz.write_bytes(gzip.compress((golden_dir / "reads.fa").read_bytes()))
    out = tmp_path / "chunks.fa"
    units.split_fasta_chunk(gz, out, 300)
    assert out.read_bytes() == (golden_dir / "predict_300" / "reads_chunked300.fa").read_bytes()


# ---------------------------------------------------------------------------
# token_budget_batches
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("budget", [1, 50, 300, 1000, 100000])
def test_token_budget_batches(seed, budget):
    rng = random.Random(seed)
    lengths = [rng.randint(1, 400) for _ in range(rng.randint(0, 200))]
    batches = units.token_budget_batches(lengths, budget)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert batch
        padded = len(batch) * max(lengths[i] for i in batch)
        assert padded <= budget or len(batch) == 1


def test_token_budget_batches_rejects_nonpositive_budget():
    with pytest.raises(ValueError):
        units.token_budget_batches([1, 2], 0)
