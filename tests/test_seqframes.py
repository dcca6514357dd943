"""virnucpro.frames.select_frames must equal the per-chunk identify_seq loop exactly."""
from __future__ import annotations

import random
from pathlib import Path

import pytest

from virnucpro import frames as seqframes
import units

DATA = Path(__file__).parent / "data"


def reference(chunks):
    return [(d["seqid"], d["nucleotide"], d["protein"])
            for cid, s in chunks for d in units.identify_seq(cid, s) if d["protein"] != ""]


def read_chunks(path: Path):
    return [(r.id, r.seq.upper()) for r in units.read_fasta(path, alphabet=None, check_duplicates=False)]


def read_pairs(path: Path):
    records = list(units.read_fasta(path, alphabet=None, check_duplicates=False))
    return [(r.id, r.seq) for r in records]


@pytest.mark.parametrize("size", [300, 500])
def test_golden_chunk_files(size):
    chunks = read_chunks(DATA / f"predict_{size}" / f"reads_chunked{size}.fa")
    got = seqframes.select_frames(chunks)
    assert got == reference(chunks)
    # and the original's own outputs, byte for byte
    nucleotides = read_pairs(DATA / f"predict_{size}" / "reads_identified_nucleotide.fa")
    proteins = read_pairs(DATA / f"predict_{size}" / "reads_identified_protein.faa")
    assert [(i, n) for i, n, _ in got] == nucleotides
    assert [(i, p) for i, _, p in got] == proteins
    assert len(got) > 10


def test_empty_input():
    assert seqframes.select_frames([]) == []
    assert seqframes.select_frames(iter([])) == []


def test_short_and_degenerate_chunks():
    chunks = [("a", ""), ("b", "A"), ("c", "AC"), ("d", "ACG"), ("e", "TAA"), ("f", "NNN"),
              ("g", "AAAA"), ("h", "TTTTT"), ("i", "A" * 300), ("j", "N" * 300), ("k", "acgt" * 10),
              ("l", "ACGTNACGTACGT"), ("m", "TAG" * 100), ("n", "ÅCGTACGT"), ("o", "AC GT\tACG")]
    assert seqframes.select_frames(chunks) == reference(chunks)


def test_generator_input_and_tuple_output():
    chunks = [(f"x{i}", "ATG" + "GCA" * i) for i in range(1, 30)]
    got = seqframes.select_frames(iter(chunks))
    assert got == reference(chunks)
    assert all(isinstance(item, tuple) and len(item) == 3 for item in got)


def _random_sequence(rng: random.Random, length: int, alphabet: str) -> str:
    return "".join(rng.choices(alphabet, k=length))


def _stop_free(rng: random.Random, codons: int) -> str:
    """A stop-free forward ORF, so frames survive even at long lengths."""
    sense = [c for c, aa in units.CODON_TABLE.items() if aa != "*"]
    return "".join(rng.choice(sense) for _ in range(codons))


@pytest.mark.parametrize("alphabet", ["ACGT", "ACGTN", "ACGTNRYKMSWBDHV", "ACGTacgt", "AT", "CG"])
def test_random_sequences_match(alphabet):
    rng = random.Random(f"seqframes-{alphabet}")
    chunks = []
    for index in range(400):
        length = rng.choice([rng.randint(1, 20), rng.randint(1, 1000), 300, 500, 299, 301, 151])
        kind = rng.random()
        if kind < 0.4:
            sequence = _random_sequence(rng, length, alphabet)
        elif kind < 0.8:
            # planted ORF (forward or reverse), possibly with an ambiguity code inside
            orf = _stop_free(rng, max(1, length // 3))[:length]
            if rng.random() < 0.5:
                orf = units.reverse_complement(orf)
            if rng.random() < 0.3 and len(orf) > 5:
                at = rng.randrange(len(orf))
                orf = orf[:at] + rng.choice(alphabet) + orf[at + 1:]
            sequence = orf
        else:
            sequence = _random_sequence(rng, length, alphabet).upper()
        chunks.append((f"seq{index}_chunk_{index % 7 + 1}", sequence))
    got = seqframes.select_frames(chunks)
    assert got == reference(chunks)
    assert got, "the planted ORFs must give some stop-free frames"


def test_every_length_1_to_1000():
    rng = random.Random(7)
    chunks = []
    for length in range(1, 1001):
        chunks.append((f"f{length}", _stop_free(rng, length // 3 + 1)[:length]))
        chunks.append((f"r{length}", units.reverse_complement(_stop_free(rng, length // 3 + 1)[:length])))
        if length % 5 == 0:
            chunks.append((f"n{length}", _random_sequence(rng, length, "ACGTN")))
    assert seqframes.select_frames(chunks) == reference(chunks)


def test_block_boundaries(monkeypatch):
    """Many chunks of a few lengths, split over several blocks, keep input order."""
    monkeypatch.setattr(seqframes, "BLOCK_CHUNKS", 7)
    rng = random.Random(11)
    chunks = []
    for index in range(200):
        length = rng.choice([30, 31, 32, 2, 60])
        sequence = _stop_free(rng, 21)[:length] if index % 2 else _random_sequence(rng, length, "ACGT")
        if index % 13 == 0:
            sequence = sequence[:5] + "N" + sequence[6:]
        chunks.append((f"c{index}", sequence))
    assert seqframes.select_frames(chunks) == reference(chunks)
