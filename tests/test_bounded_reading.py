"""FASTA/FASTQ are read in bounded pieces: junk is refused after one block, a record needs ~1 byte per base,
and the pieces give exactly the records, offsets and messages of whole lines."""
from __future__ import annotations

import gzip
import io
import random
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import fasta
from virnucpro.errors import InputError
from virnucpro.fastq import parse_sequences

REPO = Path(__file__).resolve().parent.parent

_rng = random.Random(5)
_dna = "".join(_rng.choice("ACGTN") for _ in range(1000)).encode()
TRICKY = [
    b">a desc\nACGT\nAC GT\n>b\nGGGG\n",
    b"\xef\xbb\xbf>a\r\nACGT\r\nAAA\r\n>b\rCCC\rGG\r",
    b"\n\n>a\nAC\r\r\nGT\n\n>b x\tz\n" + _dna + b"\n",
    b">a\n" + _dna[:200] + b"\r" + _dna[:50] + b"\r\n",
    b">a\nAC\rGT\r\r\nTT\n",
    b">a\nACGTE\xc3\xa9\xe9Q\n",
    b">a\nMKVLEEQ\n",
    b"junk\n>a\nAC\n",
    b"   \n@r\nACGT\n+\nIIII\n",
    b">a\nAC\x00GT\n",
    b">\nACGT\n",
    b">a\n\n>b\nAC\n",
    b">a b " + b"h" * 100 + b"\n" + (_dna[:70] + b"\n") * 5,
    b"\n x\n",
    b"@r1 d\nACGT\nAC\n+r1\nIIII\nII\n\n@r2\n" + b"A" * 300 + b"\n+\n" + b"I" * 300 + b"\n",
    b"@r1\nAC GT \n+\nIIIII\n",
    b"@r1\nACGT\n+r2\nIIII\n",
    b"@r1\nACGT\n@r2\n",
    b"@r1\nACGT\n+\nIII\n",
    b"@r1\r\nACGT\r\n+\r\nIIII\r\n@r2\rAC\r+\rII\r",
    b"@r1\nAC\x00T\n+\nIIII\n",
    b"@r1\nACGT\n",
]


def parsed(data: bytes, alphabet: str | None) -> list | str:
    try:
        return [(offset, r.id, r.description, r.seq) for offset, r in
                parse_sequences(io.BufferedReader(io.BytesIO(data)), "f", alphabet=alphabet)]
    except InputError as exc:
        return f"error: {exc}"


@pytest.mark.parametrize("block", [3, 5, 7, 16])
def test_lines_cut_in_pieces_give_what_whole_lines_give(monkeypatch, block):
    whole = {(i, a): parsed(data, a) for i, data in enumerate(TRICKY) for a in ("dna", "protein", None)}
    monkeypatch.setattr(fasta, "LINE_BLOCK", block)
    assert {(i, a): parsed(data, a) for i, data in enumerate(TRICKY) for a in ("dna", "protein", None)} == whole
    assert whole[(0, "dna")] == [(0, "a", "a desc", "ACGTACGT"), (19, "b", "b", "GGGG")]
    assert "text before the first '>' header" in whole[(7, "dna")]


_PEAK = ("import sys\n"
         "from pathlib import Path\n"
         "from virnucpro.shardindex import build_index, input_source\n"
         "from virnucpro.errors import InputError\n"
         "try:\n"
         "    index = build_index(input_source(Path(sys.argv[1])), Path(sys.argv[2]), 300, 1000)\n"
         "    print(index.records, index.chunks)\n"
         "except InputError as exc:\n"
         "    print(exc)\n"
         "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])\n")


def _read_with_peak(path: Path, work: Path) -> tuple[str, int]:
    """What the validating input pass says of ``path``, and the process's peak RSS in KiB (VmHWM: reset at exec)."""
    done = subprocess.run([sys.executable, "-c", _PEAK, str(path), str(work)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    *said, peak = done.stdout.strip().splitlines()
    return "\n".join(said), int(peak)


MB = 1 << 20


@pytest.mark.parametrize("compressed", [False, True])
def test_junk_before_the_first_header_is_refused_in_flat_memory(tmp_path, compressed):
    opener = gzip.open if compressed else open
    small, big = tmp_path / "small.txt", tmp_path / "big.txt"
    for path, size in ((small, 1000), (big, 40 * MB)):
        with opener(path, "wb") as handle:
            for _ in range(0, size, MB):
                handle.write(b"A" * min(size, MB))  # one line, no newline
    said_small, peak_small = _read_with_peak(small, tmp_path / "w1")
    said_big, peak_big = _read_with_peak(big, tmp_path / "w2")
    assert said_big.endswith("line 1: text before the first '>' header; not a FASTA file") and str(big) in said_big
    assert peak_big - peak_small < 8 * 1024, (peak_small, peak_big)  # KiB: whole-line reading needs > 40 MB more


def _single_line_genome(path: Path, bases: int) -> Path:
    block = random.Random(1).randbytes(MB).translate(bytes(b"ACGT"[i % 4] for i in range(256)))
    with open(path, "wb") as handle:
        handle.write(b">chr1 one line\n")
        for _ in range(bases // MB):
            handle.write(block)
        handle.write(b"\n")
    return path


def test_a_single_line_chromosome_needs_about_one_byte_per_base(tmp_path):
    """Peak memory grows by under 1.5 bytes per added base (the constant: the allocator's own slack)."""
    peaks = []
    for bases in (32 * MB, 64 * MB):
        said, peak = _read_with_peak(_single_line_genome(tmp_path / f"g{bases}.fa", bases), tmp_path / f"w{bases}")
        assert said == f"1 {(bases + 299) // 300}"
        peaks.append(peak)
    assert (peaks[1] - peaks[0]) * 1024 < 1.5 * 32 * MB, peaks  # whole lines: > 3 bytes per base
