"""prediction.py end to end with the tiny stand-in models: formats, consistency, errors, resume."""
from __future__ import annotations

import gzip
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import prediction
from virnucpro import outputs, rundir
import units

REPO = Path(__file__).resolve().parent.parent


def random_dna(rng: random.Random, length: int) -> str:
    return "".join(rng.choice("ACGT") for _ in range(length))


def write_fasta(path: Path, records: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f">{i}\n{s}\n" for i, s in records))
    return path


def read_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def original_consensus(results: Path) -> str:
    """The original per-chunk consensus, computed with pandas as VirNucPro does."""
    df = pd.read_csv(results, sep="\t")
    df["Modified_ID"] = df["Sequence_ID"].str[:-2]
    rows = [(key, group["score2"].max() >= group["score1"].max())
            for key, group in df.groupby("Modified_ID")]
    return "Modified_ID\tIs_Virus\n" + "".join(f"{k}\t{bool(v)}\n" for k, v in rows)


def test_golden_reads_outputs_are_consistent(run, tmp_path, golden_dir):
    reads = tmp_path / "reads.fa"
    shutil.copy(golden_dir / "reads.fa", reads)
    out = tmp_path / "out"
    assert run(reads, 300, out) == 0

    # intermediate FASTA files keep the original names and bytes
    golden = golden_dir / "predict_300"
    for name in ("reads_chunked300.fa", "reads_identified_nucleotide.fa", "reads_identified_protein.faa"):
        assert (out / name).read_bytes() == (golden / name).read_bytes(), name

    results = read_rows(out / "prediction_results.txt")
    assert results[0] == ["Sequence_ID", "Prediction", "score1", "score2"]
    frame_ids = [line[1:] for line in (golden / "reads_identified_nucleotide.fa").read_text().splitlines()
                 if line.startswith(">")]
    assert [r[0] for r in results[1:]] == frame_ids
    for frame_id, label, score1, score2 in results[1:]:
        s1, s2 = np.float32(score1), np.float32(score2)
        assert str(s1) == score1 and str(s2) == score2
        assert abs(float(s1) + float(s2) - 1) < 1e-5
        assert label == ("virus" if s2 > s1 else "others")

    assert (out / "prediction_results_highestscore.csv").read_text() == original_consensus(out / "prediction_results.txt")

    summary = read_rows(out / "prediction_summary.tsv")
    assert tuple(summary[0]) == outputs.SUMMARY_COLUMNS
    records = list(units.read_fasta(reads))
    assert [r[0] for r in summary[1:]] == [rec.id for rec in records]
    consensus = dict(read_rows(out / "prediction_results_highestscore.csv")[1:])
    by_chunk: dict[str, list[float]] = {}
    for frame_id, _, _, score2 in results[1:]:
        by_chunk.setdefault(frame_id[:-2], []).append(float(score2))
    for rec, row in zip(records, summary[1:]):
        seq_id, length, chunks, scored, viral, fraction, max_score, mean_score, call = row
        chunk_ids = [f"{seq_id}_chunk_{k}" for k in range(1, int(chunks) + 1)]
        assert int(length) == len(rec.seq)
        assert int(chunks) == len(units.chunk_sequence(rec.seq, 300))
        assert int(scored) == sum(c in consensus for c in chunk_ids)
        assert int(viral) == sum(consensus.get(c) == "True" for c in chunk_ids)
        if int(scored) == 0:
            assert (fraction, max_score, mean_score, call) == ("NA", "NA", "NA", "no_call")
        else:
            assert float(fraction) == pytest.approx(int(viral) / int(scored), abs=1e-4)
            assert float(max_score) == max(max(by_chunk[c]) for c in chunk_ids if c in by_chunk)
            assert call == ("virus" if int(viral) / int(scored) >= 0.5 else "others")
    assert any(r[-1] == "no_call" for r in summary[1:])  # the all-N and 1-bp records


def test_gzip_input_gives_same_results(run, tmp_path, golden_dir):
    plain = tmp_path / "reads.fa"
    shutil.copy(golden_dir / "reads.fa", plain)
    packed = tmp_path / "reads.fa.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert run(plain, 300, tmp_path / "a") == 0
    assert run(packed, 300, tmp_path / "b") == 0
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv", "prediction_summary.tsv",
                 "reads_identified_protein.faa"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shard_size_changes_no_result(run, tmp_path, golden_dir):
    """Shards and batches only regroup the work: scores agree to float32 rounding."""
    assert run(golden_dir / "reads.fa", 300, tmp_path / "a") == 0
    assert run(golden_dir / "reads.fa", 300, tmp_path / "b", "--shard-size", "7", "--batch-tokens", "300") == 0
    a, b = (read_rows(tmp_path / d / "prediction_results.txt") for d in "ab")
    assert [r[:2] for r in a] == [r[:2] for r in b]
    np.testing.assert_allclose(np.array([r[2:] for r in a[1:]], dtype=float),
                               np.array([r[2:] for r in b[1:]], dtype=float), atol=1e-5)


def test_shards_are_read_in_order_off_the_main_thread(run, tmp_path, golden_dir, monkeypatch):
    """The prefetch thread reads each shard, so embedding never waits for the input file."""
    from virnucpro.shardindex import ShardReader

    reads, real_read = [], ShardReader.read

    def recording_read(self, k):
        reads.append((k, threading.current_thread() is threading.main_thread()))
        return real_read(self, k)

    monkeypatch.setattr(ShardReader, "read", recording_read)
    assert run(golden_dir / "reads.fa", 300, tmp_path / "a", "--shard-size", "7") == 0
    assert len(reads) > 2 and [k for k, _ in reads] == list(range(len(reads)))
    assert not any(on_main for _, on_main in reads)


def test_no_surviving_chunk_gives_header_only_results(run, tmp_path):
    fasta = write_fasta(tmp_path / "n.fa", [("allN", "N" * 700), ("tiny", "AC")])
    out = tmp_path / "out"
    assert run(fasta, 300, out) == 0
    assert (out / "prediction_results.txt").read_text() == outputs.header_line(outputs.RESULTS_COLUMNS)
    assert (out / "prediction_results_highestscore.csv").read_text() == outputs.header_line(outputs.CONSENSUS_COLUMNS)
    summary = read_rows(out / "prediction_summary.tsv")[1:]
    assert [(r[0], r[2], r[3], r[-1]) for r in summary] == [("allN", "3", "0", "no_call"), ("tiny", "1", "0", "no_call")]


def test_keep_features_writes_merged_files(run, tmp_path, golden_dir, esm_model_dir):
    out = tmp_path / "out"
    assert run(golden_dir / "reads.fa", 300, out, "--keep-features", "--shard-size", "20") == 0
    files = sorted((out / "features").glob("shard_*_merged.pt"))
    assert len(files) > 1
    ids = []
    for path in files:
        merged = torch.load(path, weights_only=True)
        assert merged["data"].shape == (len(merged["ids"]), merged["dna_dim"] + merged["protein_dim"])
        assert merged["dna_dim"] == 768 and merged["virnucpro_version"] == units.__version__
        ids += merged["ids"]
    assert ids == [r[0] for r in read_rows(out / "prediction_results.txt")[1:]]


# --- checkpoints ---------------------------------------------------------------------------


def test_missing_checkpoint_says_how_to_train(tmp_path, golden_dir, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = prediction.main([str(golden_dir / "reads.fa"), "300", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "300_model_fastesm650.pth" in err and "train.py" in err and "--original-models" in err
    assert len(err.splitlines()) == 1


def test_chunk_size_mismatch_is_refused(run, tmp_path, golden_dir, capsys):
    assert run(golden_dir / "reads.fa", 500, tmp_path / "out") == 2
    assert "300-bp chunks" in capsys.readouterr().err


def test_legacy_whole_model_pickle_is_refused(run, tmp_path, golden_dir, capsys):
    legacy = tmp_path / "300_model.pth"
    torch.save(units.MLPClassifier(3328), legacy)  # what the original train.py saved
    assert run(golden_dir / "reads.fa", 300, tmp_path / "out", model=legacy) == 2
    err = capsys.readouterr().err
    assert "3328" in err and "ESM2-3B" in err and "train.py" in err


def test_width_mismatch_is_refused(run, tmp_path, golden_dir, capsys, esm_model_dir):
    wrong = tmp_path / "wrong.pth"
    units.save_checkpoint(wrong, units.MLPClassifier(768 + 2560), dna_model="d", dna_dim=768,
                          protein_model="esm2_t36_3B_UR50D", protein_dim=2560, chunk_size=300)
    assert run(golden_dir / "reads.fa", 300, tmp_path / "out", model=wrong) == 2
    assert "2560" in capsys.readouterr().err


# --- bad input -----------------------------------------------------------------------------


BAD_INPUTS = {
    "empty": b"",
    "fastq_no_plus": b"@r1\nACGT\nIIII\n@r2\nACGT\n+\nIIII\n",
    "fastq_quality_length": b"@r1\nACGT\n+\nIIII\n@r2\nACGTA\n+\nIIII\n@r3\nACGT\n+\nIIII\n",
    "protein": b">p1\nMKVLAAGIEFQW\n",
    "no_sequence": b">r1\n>r2\nACGT\n",
    "duplicate_ids": b">r1\nACGT\n>r1\nACGA\n",
    "text_first": b"hello\n>r1\nACGT\n",
    "binary": bytes(range(256)) * 4,
    "truncated_gzip": gzip.compress(b">r1\n" + bytes(random.Random(1).choices(b"ACGT", k=20000)))[:2000],
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(run, tmp_path, capsys, kind):
    path = tmp_path / f"{kind}.fa"
    path.write_bytes(BAD_INPUTS[kind])
    out = tmp_path / "out"
    assert run(path, 300, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err
    assert not (out / "prediction_results.txt").exists()


@pytest.mark.parametrize("argv_tail, message", [
    (["0"], "positive integer"), (["abc"], "positive integer"), (["-5"], "positive integer")])
def test_bad_length_exits_2(tmp_path, golden_dir, capsys, argv_tail, message):
    with pytest.raises(SystemExit) as exit_info:
        prediction.main([str(golden_dir / "reads.fa"), *argv_tail, str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_input_and_directory_input(run, tmp_path, capsys):
    assert run(tmp_path / "nope.fa", 300, tmp_path / "o") == 2
    assert "no such file" in capsys.readouterr().err
    assert run(tmp_path, 300, tmp_path / "o") == 2
    assert "directory" in capsys.readouterr().err


def test_outdir_that_is_a_file_or_read_only(run, tmp_path, golden_dir, capsys):
    as_file = tmp_path / "file"
    as_file.write_text("keep me")
    assert run(golden_dir / "reads.fa", 300, as_file) == 2
    assert "not a directory" in capsys.readouterr().err and as_file.read_text() == "keep me"
    if os.geteuid() != 0:  # root can write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert run(golden_dir / "reads.fa", 300, locked / "sub") == 2


def test_tolerated_inputs(run, tmp_path):
    rng = random.Random(3)
    seq = random_dna(rng, 650)
    crlf = tmp_path / "crlf.fa"
    crlf.write_bytes(b">r1 desc\r\n" + seq[:300].lower().encode() + b"\r\n" + seq[300:].encode()
                     + b"\r\n>r\xff2\r\nACGTRYKMNNACGTAC\r\n")
    out = tmp_path / "out"
    assert run(crlf, 300, out) == 0
    summary = (out / "prediction_summary.tsv").read_bytes()
    assert b"r\xff2\t16\t1" in summary
    chunked = (out / "crlf_chunked300.fa").read_bytes()
    assert b">r1_chunk_1\n" + seq[:60].lower().encode() in chunked


# --- resume, force, crashes --------------------------------------------------------------


def test_rerun_is_noop_and_changed_settings_are_refused(run, tmp_path, golden_dir, capsys):
    reads = tmp_path / "reads.fa"
    shutil.copy(golden_dir / "reads.fa", reads)
    out = tmp_path / "out"
    assert run(reads, 300, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert run(reads, 300, out) == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    with reads.open("a") as handle:
        handle.write(">extra\nACGTACGTACGT\n")
    assert run(reads, 300, out) == 2
    assert "input_sha256" in capsys.readouterr().err
    assert run(reads, 300, out, "--batch-tokens", "999") == 2
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before

    (out / "notes.txt").write_text("mine")
    assert run(reads, 300, out, "--force") == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert "extra" in (out / "prediction_summary.tsv").read_text()


def test_foreign_results_are_not_overwritten(run, tmp_path, golden_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "prediction_results.txt").write_text("someone else's\n")
    assert run(golden_dir / "reads.fa", 300, out) == 2
    assert (out / "prediction_results.txt").read_text() == "someone else's\n"


def _cli(esm_model_dir, dnabert_model_dir, checkpoint, fasta, out, *extra) -> list[str]:
    return [sys.executable, str(REPO / "prediction.py"), str(fasta), "300", str(out), "--model", str(checkpoint),
            "--esm-model", str(esm_model_dir), "--dnabert-model", str(dnabert_model_dir), "--device", "cpu",
            "-q", *extra]


@pytest.mark.slow
def test_sigkill_then_rerun_is_byte_identical(tmp_path, esm_model_dir, dnabert_model_dir, checkpoint_300):
    rng = random.Random(11)
    fasta = write_fasta(tmp_path / "in.fa", [(f"s{i}", random_dna(rng, rng.randint(200, 1400))) for i in range(60)])
    cli = lambda out: _cli(esm_model_dir, dnabert_model_dir, checkpoint_300, fasta, out, "--shard-size", "15")
    clean = tmp_path / "clean"
    subprocess.run(cli(clean), check=True, cwd=REPO)
    expected = {p.name: p.read_bytes() for p in clean.iterdir() if p.is_file()}

    # Killed during start-up, after the first finished shard, and after the second.
    for finished_shards in (0, 1, 2):
        out = tmp_path / f"killed_{finished_shards}"
        proc = subprocess.Popen(cli(out), cwd=REPO)
        deadline = time.monotonic() + 120
        while len(list((out / rundir.WORK_DIR_NAME).glob("shard_*.done"))) < finished_shards:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        if finished_shards == 0:
            time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "prediction_summary.tsv").exists()
        for path in out.glob("*"):  # nothing under a final name is partial
            if path.is_file() and path.name in expected:
                assert path.read_bytes() == expected[path.name]
        subprocess.run(cli(out), check=True, cwd=REPO)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == expected


@pytest.mark.slow
def test_two_runs_into_two_outdirs_do_not_interfere(tmp_path, esm_model_dir, dnabert_model_dir, checkpoint_300,
                                                     golden_dir):
    procs = [subprocess.Popen(_cli(esm_model_dir, dnabert_model_dir, checkpoint_300, golden_dir / "reads.fa",
                                   tmp_path / name, "--shard-size", "10"), cwd=REPO) for name in ("a", "b")]
    assert [p.wait() for p in procs] == [0, 0]
    for path in (tmp_path / "a").iterdir():
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()


# The child reports its own VmHWM: after fork + exec, ru_maxrss also counts the parent's pages
# (here pytest with torch and the models loaded), which would hide any growth.
_REPORT_PEAK = ("import runpy, sys\n"
                "sys.argv = sys.argv[1:]\n"
                "try:\n"
                "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
                "finally:\n"
                "    print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0])\n")


def _peak_rss_kib(cmd: list[str]) -> int:
    done = subprocess.run([cmd[0], "-c", _REPORT_PEAK, *cmd[1:]], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


def _write_unscorable(path: Path, records: int, length: int) -> Path:
    """Records of N only: chunked, framed and written like any input, but no frame is kept to embed."""
    line = "N" * length + "\n"
    with open(path, "w") as handle:
        for index in range(records):
            handle.write(f">n{index}\n{line}")
    return path


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_input(tmp_path, esm_model_dir, dnabert_model_dir, checkpoint_300):
    """A 60 MB input must cost no more peak memory than a 1 MB one, give or take 20 MB.

    Holding the 60 MB of sequences (12,000 records of 5 kb) at once costs more: a variant
    that reads every shard's records before scoring peaked 61 MiB above the small run
    (VmHWM) and fails here; the streaming engine passes.  N-only records keep the run
    short: they stream, chunk and get written like any input, but no frame survives to
    be embedded.
    """
    small = _write_unscorable(tmp_path / "small.fa", 200, 5000)
    large = _write_unscorable(tmp_path / "large.fa", 12000, 5000)
    rss = [_peak_rss_kib(_cli(esm_model_dir, dnabert_model_dir, checkpoint_300, fasta, tmp_path / fasta.stem,
                              "--shard-size", "2000"))
           for fasta in (small, large)]
    shutil.rmtree(tmp_path / "large")
    assert rss[1] < rss[0] + 20 * 1024, rss


# --- inputs that are not plain DNA files -------------------------------------------------------


def test_rna_scores_exactly_as_its_dna_spelling(run, tmp_path):
    rng = random.Random(8)
    dna = [(f"v{i}", random_dna(rng, rng.randint(250, 900))) for i in range(6)]
    rna = [(name, seq.replace("T", "U") if i % 2 else seq.replace("T", "U").lower()) for i, (name, seq) in enumerate(dna)]
    assert run(write_fasta(tmp_path / "dna.fa", dna), 300, tmp_path / "d") == 0
    assert run(write_fasta(tmp_path / "rna.fa", rna), 300, tmp_path / "r") == 0
    for name in (rundir.RESULTS_NAME, rundir.CONSENSUS_NAME, rundir.SUMMARY_NAME, "dna_identified_nucleotide.fa"):
        other = name.replace("dna_", "rna_")
        assert (tmp_path / "d" / name).read_bytes() == (tmp_path / "r" / other).read_bytes(), name
    chunked = (tmp_path / "r" / "rna_chunked300.fa").read_text()  # the chunk FASTA shows the input as given
    assert "U" in chunked and "u" in chunked and "T" not in chunked.replace("_chunk_", "")


def test_long_record_is_sharded_by_chunk_and_summarised_whole(run, tmp_path):
    rng = random.Random(9)
    records = [("before", random_dna(rng, 700)), ("chromosome", random_dna(rng, 300 * 23 + 17)),
               ("after", random_dna(rng, 400))]
    fasta = write_fasta(tmp_path / "long.fa", records)
    out = tmp_path / "out"
    assert run(fasta, 300, out, "--shard-size", "5", "--keep-features") == 0
    assert len(list((out / "features").glob("shard_*"))) >= 5  # the long record spans several shards
    assert run(fasta, 300, tmp_path / "whole", "--shard-size", "1000") == 0
    for name in ("long_chunked300.fa", "long_identified_nucleotide.fa", "long_identified_protein.faa"):
        assert (out / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    consensus = out / rundir.CONSENSUS_NAME
    assert consensus.read_text() == original_consensus(out / rundir.RESULTS_NAME)
    best = {}
    for frame_id, _, s1, s2 in read_rows(out / rundir.RESULTS_NAME)[1:]:
        pair = best.setdefault(frame_id[:-2], [np.float32(s1), np.float32(s2)])
        pair[:] = [max(pair[0], np.float32(s1)), max(pair[1], np.float32(s2))]
    from virnucpro.results import summary_row
    from virnucpro.shards import SequenceInfo
    expected = [summary_row(SequenceInfo(name, len(seq), [f"{name}_chunk_{k}" for k in
                                                            range(1, len(units.chunk_sequence(seq, 300)) + 1)]), best)
                for name, seq in records]
    assert read_rows(out / rundir.SUMMARY_NAME)[1:] == expected
    assert expected[1][2] == "24"


def _feed(fd: int, data: bytes) -> threading.Thread:
    def write() -> None:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    thread = threading.Thread(target=write)
    thread.start()
    return thread


@pytest.mark.parametrize("kind", [pytest.param("stdin", marks=pytest.mark.slow),
                                  pytest.param("fifo", marks=pytest.mark.slow), "process_substitution"])
def test_stream_input_is_read_once_and_reruns_resume(run, tmp_path, golden_dir, monkeypatch, kind):
    data = gzip.compress((golden_dir / "reads.fa").read_bytes())
    assert run(golden_dir / "reads.fa", 300, tmp_path / "file") == 0

    def run_stream(out: Path) -> int:
        if kind == "fifo":
            path = tmp_path / "reads.fa"
            if not path.exists():
                os.mkfifo(path)
            feeder = threading.Thread(target=lambda: path.write_bytes(data))
            feeder.start()
        else:
            read_end, write_end = os.pipe()
            feeder = _feed(write_end, data)
            path = Path(f"/dev/fd/{read_end}")
            if kind == "stdin":
                monkeypatch.setattr(sys, "stdin", os.fdopen(read_end, "r"))
                path = Path("-")
        try:
            return run(path, 300, out)
        finally:
            feeder.join(timeout=30)
            if kind != "fifo":
                os.close(read_end) if kind != "stdin" else sys.stdin.close()

    out = tmp_path / "stream"
    assert run_stream(out) == 0
    stem = "reads" if kind == "fifo" else "stdin"
    for name, data_file in outputs_by_kind(tmp_path / "file", out, stem):
        assert data_file.read_bytes() == (tmp_path / "file" / name).read_bytes(), name
    assert not (out / rundir.WORK_DIR_NAME / "input.spool").exists()
    assert run_stream(out) == 0  # a rerun reads the stream again: same bytes, so complete already
    assert not (out / rundir.WORK_DIR_NAME / "input.spool").exists()


@pytest.mark.slow
def test_interrupted_piped_run_resumes_from_the_stream_read_again(run, tmp_path, golden_dir, monkeypatch):
    from virnucpro import results

    data = (golden_dir / "reads.fa").read_bytes()
    real, written = results.write_shard, []

    def interrupt_second(work, shard, *args):
        if len(written) == 1 and not monkeypatch_done:
            raise KeyboardInterrupt
        written.append(shard.index)
        real(work, shard, *args)

    monkeypatch.setattr(results, "write_shard", interrupt_second)
    out = tmp_path / "out"
    for monkeypatch_done in (False, True):
        read_end, write_end = os.pipe()
        feeder = _feed(write_end, data)
        code = run(Path(f"/dev/fd/{read_end}"), 300, out, "--shard-size", "20")
        feeder.join(timeout=30)
        os.close(read_end)
        assert code == (0 if monkeypatch_done else 130)
    assert written[0] == 0 and 0 not in written[1:] and len(written) == len(set(written))
    assert run(golden_dir / "reads.fa", 300, tmp_path / "file", "--shard-size", "20") == 0
    for name, data_file in outputs_by_kind(tmp_path / "file", out, "stdin"):
        assert data_file.read_bytes() == (tmp_path / "file" / name).read_bytes(), name


def outputs_by_kind(file_out: Path, stream_out: Path, stem: str):
    for path in sorted(file_out.iterdir()):
        if path.is_file():
            yield path.name, stream_out / path.name.replace("reads_", f"{stem}_")


def test_devices_are_refused_never_read(run, tmp_path, capsys):
    assert run(Path("/dev/zero"), 300, tmp_path / "out") == 2
    assert "not a regular file or a pipe" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


class _RunsCode:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_and_never_runs(run, tmp_path, golden_dir, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "300_model_fastesm650.pth"
    torch.save({"format_version": 2, "payload": _RunsCode(marker)}, evil)
    assert run(golden_dir / "reads.fa", 300, tmp_path / "out", model=evil) == 2
    err = capsys.readouterr().err.strip()
    assert "not a VirNucPro-FastESM checkpoint" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_label_map_decides_which_output_is_virus(run, tmp_path, golden_dir, checkpoint_300):
    """The classifier's two output rows swapped together with label_map {0: virus, 1: others}: the same files,
    byte for byte (score1 is P(others), score2 P(virus), whatever the order of the classifier's outputs)."""
    checkpoint = torch.load(checkpoint_300, weights_only=True)
    for key in ("output_layer.weight", "output_layer.bias"):
        checkpoint["state_dict"][key] = checkpoint["state_dict"][key].flip(0).clone()
    checkpoint["label_map"] = {0: "virus", 1: "others"}
    swapped = tmp_path / "swapped" / checkpoint_300.name
    swapped.parent.mkdir()
    torch.save(checkpoint, swapped)
    assert run(golden_dir / "reads.fa", 300, tmp_path / "plain") == 0
    assert run(golden_dir / "reads.fa", 300, tmp_path / "swap", model=swapped) == 0
    for name in (rundir.RESULTS_NAME, rundir.CONSENSUS_NAME, rundir.SUMMARY_NAME, rundir.VIRAL_FASTA_NAME):
        assert (tmp_path / "swap" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
