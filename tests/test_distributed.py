"""Scale-out under torchrun (virnucpro.distributed): helpers, and real multi-rank runs on CPU (gloo).

The multi-rank tests start ``python -m torch.distributed.run --standalone`` with the tiny
stand-in models; each launch costs a few seconds (interpreters, imports), so they are few
and marked slow.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import features_extract
import prediction
from test_features_extract import SPF, copy_identified, merged_files
try:  # the checkpoint fixture lives in test_prediction, or in conftest once it is shared
    from test_prediction import checkpoint_300  # noqa: F401
except ImportError:
    pass
from virnucpro import assemble, distributed, rundir, runstate
from virnucpro.errors import InputError, RunFailedError

REPO = Path(__file__).resolve().parent.parent
RANK_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", *distributed.RESTART_ENVS)


@pytest.fixture
def one_rank(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean environment: no torchrun or SLURM variables."""
    for name in RANK_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def torchrun(nproc: int, *argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``argv`` (a script and its arguments) on ``nproc`` CPU ranks; the test HF environment is inherited."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    for name in RANK_ENV:
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           *map(str, argv)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(stderr: str, prog: str) -> list[str]:
    return [line for line in stderr.splitlines() if f"{prog}: error:" in line]


def assert_no_traceback_of_ours(stderr: str) -> None:
    """torchrun itself reports a failed worker with its own traceback; none may come from this project."""
    frames = [line for line in stderr.splitlines() if line.strip().startswith("File ")
              and (str(REPO) in line or "virnucpro" in line)
              and "site-packages" not in line]  # a virtual environment inside the checkout (as in CI) is not ours
    assert not frames, stderr


# --- helpers, one process ---------------------------------------------------------------------


def test_one_process_needs_no_process_group(one_rank) -> None:
    assert (distributed.world_size(), distributed.rank(), distributed.local_rank()) == (1, 0, 0)
    assert distributed.is_main() and distributed.first_launch()
    assert distributed.launch(lambda: 7) == 7
    assert distributed.on_main(lambda: "plan") == "plan"
    assert distributed.together(lambda: 3, turns=True) == 3
    assert distributed.together(lambda: 3, run=False) is None
    assert distributed.broadcast({"a": 1}) == {"a": 1} and distributed.gather(5) == [5]
    assert distributed.my_share([1, 2, 3]) == [1, 2, 3]
    distributed.barrier()
    with pytest.raises(InputError):
        distributed.on_main(lambda: (_ for _ in ()).throw(InputError("bad")))
    assert str(distributed.rank_device("cpu")) == "cpu"


def test_restarts_and_requeues_are_not_first_launches(one_rank) -> None:
    one_rank.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert distributed.first_launch() and distributed.restart_note() == ""
    one_rank.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not distributed.first_launch() and "TORCHELASTIC_RESTART_COUNT=1" in distributed.restart_note()
    one_rank.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    one_rank.setenv("SLURM_RESTART_COUNT", "2")
    assert not distributed.first_launch()


def test_shares_are_disjoint_and_complete(one_rank) -> None:
    items = list(range(7))
    one_rank.setenv("WORLD_SIZE", "3")
    shares = []
    for r in range(3):
        one_rank.setenv("RANK", str(r))
        shares.append(distributed.my_share(items))
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    one_rank.setenv("RANK", "0")
    assert distributed.my_share([5]) == [5]


def test_failures_stop_every_rank_and_only_rank_0_reports(one_rank) -> None:
    """What each rank does with the exchanged outcomes of a step (no process group needed)."""
    user = distributed._outcome(InputError("reads.fa: record r7 is bad"))
    bug = distributed._outcome(ZeroDivisionError("oops"))
    assert user == (2, True, "virnucpro.errors:InputError", "reads.fa: record r7 is bad")
    assert bug[:2] == (1, False)
    assert distributed._outcome(RunFailedError("disk full"))[:2] == (1, True)  # one line, exit 1
    one_rank.setenv("WORLD_SIZE", "2")
    one_rank.setenv("RANK", "0")
    distributed._stop_if_failed([None, None], None)  # nobody failed: carry on
    with pytest.raises(InputError, match="record r7"):  # rank 0 raises a peer's user error (the CLI prints it)
        distributed._stop_if_failed([None, user], None)
    with pytest.raises(distributed.PeerFailure) as peer:  # a peer's bug: rank 0 stops with exit 1
        distributed._stop_if_failed([None, bug], None)
    assert peer.value.exit_code == 1
    one_rank.setenv("RANK", "1")
    with pytest.raises(distributed.PeerFailure) as peer:  # other ranks stop quietly, same exit code
        distributed._stop_if_failed([user, None], None)
    assert peer.value.exit_code == 2
    own = InputError("mine")
    with pytest.raises(distributed.PeerFailure):  # even their own user error is printed by rank 0 only
        distributed._stop_if_failed([None, distributed._outcome(own)], own)
    crash = ZeroDivisionError("here")
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback where it happened
        distributed._stop_if_failed([None, distributed._outcome(crash)], crash)


# --- features_extract.py on 2 ranks -----------------------------------------------------------


GLOO_THREAD_NAMES = ("pt_gloo_runloop", "gloo_tcp_loop")  # gloo's worker and transport threads (Linux names)
THREADS_AFTER_LAUNCH = """
import os, sys
from virnucpro import distributed

def body():
    import torch._dynamo  # noqa: F401 - what loading a model with transformers does under the process group
    distributed.broadcast({"rank 0's": "value"})
    distributed.gather(distributed.rank())
    return 0

code = distributed.launch(body)
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
os.write(1, f"rank {os.environ['RANK']} threads after launch: {','.join(names)}\\n".encode())  # one write
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc (Linux)")
def test_process_group_threads_end_at_destroy(tmp_path: Path) -> None:
    """A group left alive past destroy_process_group let a gloo thread abort a finished rank at exit."""
    script = tmp_path / "threads_after_launch.py"
    script.write_text(THREADS_AFTER_LAUNCH)
    done = torchrun(2, script)
    assert done.returncode == 0, done.stderr
    reports = re.findall(r"rank (\d) threads after launch: (\S*)", done.stdout)
    assert sorted(r for r, _ in reports) == ["0", "1"], done.stdout + done.stderr
    for rank_, names in reports:
        assert not set(names.split(",")) & set(GLOO_THREAD_NAMES), f"rank {rank_}: {names}"


@pytest.fixture
def feature_data(golden_dir: Path, tmp_path: Path) -> Path:
    """viral (4 full splits of SPF), bacteria and fungi hosts: 6 merged files."""
    data = tmp_path / "one" / "data"
    data.mkdir(parents=True)
    for source, target in (("viral.1.1", "viral.1.1"), ("bacteria.1.1", "bacteria.1.1"),
                           ("bacteria.1.1", "fungi.1.1")):
        copy_identified(golden_dir, source, data, target)
    return data


@pytest.mark.slow
def test_features_extract_on_two_ranks_equals_one_process(feature_data: Path, tmp_path: Path,
                                                          esm_model_dir: Path, dnabert_model_dir: Path) -> None:
    twin = tmp_path / "two" / "data"
    shutil.copytree(feature_data, twin)
    models = ["--esm-model", str(esm_model_dir), "--dnabert-model", str(dnabert_model_dir), "--device", "cpu",
              "--sequences-per-file", str(SPF), "-q"]
    assert features_extract.main(["--data-dir", str(feature_data), *models]) == 0
    done = torchrun(2, "features_extract.py", "--data-dir", twin, *models[:-1])  # not -q: the log is checked
    assert done.returncode == 0, done.stderr
    one, two = merged_files(feature_data), merged_files(twin)
    assert list(two) == list(one) and len(one) == 6
    for name in one:
        assert two[name]["ids"] == one[name]["ids"] and two[name]["labels"] == one[name]["labels"]
        assert torch.equal(two[name]["data"], one[name]["data"]), name
    # every rank logged its share, and the shares cover the due files once
    shares = re.findall(r"\[rank (\d)/2\] INFO: (\d+) of 6 due split file\(s\) for this rank", done.stderr)
    assert sorted(r for r, _ in shares) == ["0", "1"] and sum(int(n) for _, n in shares) == 6, done.stderr


# --- prediction.py under torchrun -------------------------------------------------------------

SHARD_SIZE = "8"  # chunks per shard: about 15 shards for READS
SCORED = re.compile(r"\[rank (\d+)/\d+\] INFO: shard (\d+): \d+ sequences")


def outdir_files(out: Path) -> dict[str, bytes]:
    """Every file of a finished OUTDIR (the final outputs) by name."""
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def scored_shards(stderr: str) -> list[tuple[int, int]]:
    """(rank, shard) of every shard a run scored, from its log."""
    return [(int(r), int(k)) for r, k in SCORED.findall(stderr)]


@pytest.fixture(scope="module")
def reads(tmp_path_factory) -> Path:
    rng = random.Random(23)
    path = tmp_path_factory.mktemp("reads") / "reads.fa"
    path.write_text("".join(f">s{i}\n{''.join(rng.choices('ACGT', k=rng.randint(200, 1400)))}\n" for i in range(40)))
    return path


@pytest.fixture(scope="module")
def predict_args(esm_model_dir, dnabert_model_dir, checkpoint_300):
    """prediction.py's argv for INPUT OUTDIR with the stand-ins on CPU."""
    def _args(fasta: Path, out: Path, *extra: str) -> list[str]:
        return [str(fasta), "300", str(out), "--model", str(checkpoint_300), "--esm-model", str(esm_model_dir),
                "--dnabert-model", str(dnabert_model_dir), "--device", "cpu", "--shard-size", SHARD_SIZE, *extra]
    return _args


@pytest.fixture(scope="module")
def expected(reads, predict_args, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of one plain process on READS."""
    out = tmp_path_factory.mktemp("one") / "out"
    assert prediction.main(predict_args(reads, out, "-q")) == 0
    return outdir_files(out)


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_refuse_changed_settings(reads, predict_args, expected, tmp_path):
    out = tmp_path / "out"
    done = torchrun(2, "prediction.py", *predict_args(reads, out))
    assert done.returncode == 0, done.stderr
    assert outdir_files(out) == expected and not temp_files(out)
    scored = scored_shards(done.stderr)
    assert {r for r, _ in scored} == {0, 1}  # both ranks worked ...
    assert sorted(k for _, k in scored) == list(range(len(scored))) and len(scored) > 2  # ... each shard once
    loads = [(i, line[:10]) for i, line in enumerate(done.stderr.splitlines()) if "INFO: loading " in line]
    assert {r for _, r in loads} == {"[rank 0/2]", "[rank 1/2]"} and len(loads) == 4
    assert max(i for i, r in loads if r == "[rank 0/2]") < min(i for i, r in loads if r == "[rank 1/2]")  # turns

    changed = torchrun(2, "prediction.py", *predict_args(reads, out, "--batch-tokens", "999", "-q"), timeout=60)
    assert changed.returncode != 0
    lines = error_lines(changed.stderr, "prediction.py")
    assert len(lines) == 1 and "batch_tokens" in lines[0], changed.stderr
    assert_no_traceback_of_ours(changed.stderr)
    assert outdir_files(out) == expected


@pytest.mark.slow
def test_gzip_input_on_three_ranks_with_two_shards(reads, predict_args, tmp_path):
    rng = random.Random(5)  # 4 records of 3 chunks: shards of 9 and 3 chunks
    packed = tmp_path / "small.fa.gz"
    packed.write_bytes(gzip.compress("".join(f">g{i}\n{''.join(rng.choices('ACGT', k=900))}\n"
                                             for i in range(4)).encode()))
    one, three = tmp_path / "one", tmp_path / "three"
    assert prediction.main(predict_args(packed, one, "-q")) == 0
    done = torchrun(3, "prediction.py", *predict_args(packed, three))
    assert done.returncode == 0, done.stderr
    assert outdir_files(three) == outdir_files(one) and not temp_files(three)
    scored = scored_shards(done.stderr)
    assert sorted(k for _, k in scored) == [0, 1] and len({r for r, _ in scored}) == 2  # rank 2 was idle


def wait_for_done_shards(proc: subprocess.Popen, work: Path, count: int) -> set[str]:
    deadline = time.monotonic() + 120
    while len(done := {p.name for p in work.glob("shard_*.done")}) < count:
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it was killed"
        time.sleep(0.005)
    return done


def start_torchrun(log_file: Path, nproc: int, *argv: str | Path) -> subprocess.Popen:
    """Start a torchrun job in the background, its output going to ``log_file``."""
    env = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO))
    for name in RANK_ENV:
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           *map(str, argv)]
    with open(log_file, "w") as log:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts each rank in a session of its own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


def kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every rank, as a node failure or ``scancel -s KILL`` would."""
    pids = {proc.pid, *descendants(proc.pid)}
    for pid in pids:  # freeze first: the ranks stop where they are, the launcher cannot react
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while not all(gone(pid) for pid in pids):  # the kernel drops their locks once they are gone
        assert time.monotonic() < deadline
        pids |= set(descendants(proc.pid)) | {d for pid in pids for d in descendants(pid)}
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    proc.wait()


def wait_unlocked(out: Path) -> None:
    """Until no process holds the OUTDIR lock (a killed rank's short-lived child may keep it a moment)."""
    import fcntl

    deadline = time.monotonic() + 30
    with open(out / rundir.LOCK_NAME, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fcntl.flock(handle, fcntl.LOCK_UN)
            except BlockingIOError:
                assert time.monotonic() < deadline
                time.sleep(0.05)


def done_markers(out: Path) -> set[str]:
    return {p.name for p in (out / rundir.WORK_DIR_NAME).glob("shard_*.done")}


@pytest.mark.slow
def test_sigkilled_job_resumes_on_three_ranks_then_in_one_process(reads, predict_args, expected, tmp_path, capsys):
    """Killed on 2 ranks, resumed on 3 and killed again, finished by plain python: nothing is done twice."""
    out = tmp_path / "out"
    work = out / rundir.WORK_DIR_NAME
    job = start_torchrun(tmp_path / "two.log", 2, "prediction.py", *predict_args(reads, out))
    wait_for_done_shards(job, work, 1)
    kill_job(job)
    first = done_markers(out)
    assert not (out / "prediction_summary.tsv").exists()

    job = start_torchrun(tmp_path / "three.log", 3, "prediction.py", *predict_args(reads, out))
    wait_for_done_shards(job, work, len(first) + 1)
    kill_job(job)
    second = done_markers(out)
    log = (tmp_path / "three.log").read_text()
    by_three = {f"shard_{k:06d}.done" for _, k in scored_shards(log)}
    assert by_three and not by_three & first and by_three <= second  # finished shards were not recomputed

    wait_unlocked(out)
    assert prediction.main(predict_args(reads, out)) == 0
    by_one = {f"shard_{int(k):06d}.done" for k in re.findall(r"INFO: shard (\d+): \d+ sequences",
                                                             capsys.readouterr().err)}
    assert by_one and not by_one & second
    assert outdir_files(out) == expected and not temp_files(out)


class FifoFeeder:
    """Writes ``data`` into the named pipe ``fifo`` from a thread; with ``hold`` keeps it open until :meth:`close`
    (the job's input pass then cannot end)."""

    def __init__(self, fifo: Path, data: bytes, hold: bool):
        self.release = threading.Event()
        if not hold:
            self.release.set()

        def feed() -> None:
            try:
                with open(fifo, "wb") as pipe:  # blocks until rank 0 opens the input
                    pipe.write(data)
                    pipe.flush()
                    self.release.wait(300)
            except BrokenPipeError:
                pass  # the job was killed

        self.thread = threading.Thread(target=feed, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.release.set()
        self.thread.join(30)


@pytest.mark.slow
def test_job_killed_during_its_input_pass_resumes_on_another_rank_count(reads, predict_args, expected, tmp_path):
    """Killed on 2 ranks while rank 0 still reads the input (a named pipe held open), with shards already
    finished; resumed on 3 ranks, the finished shards are kept and the outputs are those of one process."""
    fifo = tmp_path / "reads.fa"  # the stem of the outputs, as for READS
    os.mkfifo(fifo)
    data = reads.read_bytes()
    out = tmp_path / "out"
    work = out / rundir.WORK_DIR_NAME
    feeder = FifoFeeder(fifo, data[:len(data) // 2], hold=True)
    job = start_torchrun(tmp_path / "two.log", 2, "prediction.py", *predict_args(fifo, out))
    try:
        wait_for_done_shards(job, work, 2)
        assert not feeder.release.is_set()  # the pass is still waiting for the rest of the input
    finally:
        kill_job(job)
        feeder.close()
    first = done_markers(out)
    killed_log = (tmp_path / "two.log").read_text()
    assert {r for r, _ in scored_shards(killed_log)} <= {0, 1} and "input pass done" not in killed_log
    assert runstate.INPUT_HASH_KEY not in json.loads((work / rundir.MANIFEST_NAME).read_text())
    assert not (out / rundir.SUMMARY_NAME).exists()

    wait_unlocked(out)
    feeder = FifoFeeder(fifo, data, hold=False)
    try:
        done = torchrun(3, "prediction.py", *predict_args(fifo, out))
    finally:
        feeder.close()
    assert done.returncode == 0, done.stderr
    by_three = {f"shard_{k:06d}.done" for _, k in scored_shards(done.stderr)}
    assert by_three and not by_three & first  # the shards finished before the kill were not scored again
    assert {r for r, _ in scored_shards(done.stderr)} == {0, 1, 2}
    assert outdir_files(out) == expected and not temp_files(out)


@pytest.mark.slow
def test_a_bad_record_found_late_on_two_ranks_is_one_line_and_no_hang(reads, predict_args, tmp_path):
    """Both ranks are scoring when rank 0's pass meets a bad record: one line, exit 2, nothing final, no hang."""
    fifo = tmp_path / "late.fa"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    feeder = FifoFeeder(fifo, reads.read_bytes(), hold=True)
    job = start_torchrun(tmp_path / "job.log", 2, "prediction.py", *predict_args(fifo, out, "-q"))
    try:
        wait_for_done_shards(job, out / rundir.WORK_DIR_NAME, 2)
    except BaseException:
        kill_job(job)
        raise
    finally:
        with contextlib.suppress(OSError):
            with open(fifo, "wb", buffering=0) as more:  # a second writer: its bytes follow the first's
                more.write(b">s9\nACGTXQ\n")
        feeder.close()
    assert job.wait(timeout=120) != 0  # torchrun's own code: 1 for a failed job ...
    log = (tmp_path / "job.log").read_text()
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\s*exitcode\s*: 2 ", log), log  # ... rank 0's: 2
    lines = error_lines(log, "prediction.py")
    assert len(lines) == 1 and "s9" in lines[0] and str(fifo) in lines[0], log
    assert_no_traceback_of_ours(log)
    assert not [p for p in out.iterdir() if p.is_file() and p.name != rundir.LOCK_NAME]


@pytest.mark.slow
def test_bad_input_on_two_ranks_is_one_line_and_no_hang(predict_args, tmp_path):
    bad = tmp_path / "dup.fa"
    bad.write_text(">r1\nACGTACGTAC\n>r2\nACGT\n>r1\nACGA\n")
    done = torchrun(2, "prediction.py", *predict_args(bad, tmp_path / "out", "-q"), timeout=60)
    assert done.returncode != 0
    lines = error_lines(done.stderr, "prediction.py")
    assert len(lines) == 1 and str(bad) in lines[0] and "r1" in lines[0], done.stderr
    assert_no_traceback_of_ours(done.stderr)


@pytest.mark.slow
def test_second_run_into_a_live_outdir_is_refused(reads, predict_args, expected, tmp_path, capsys):
    out = tmp_path / "out"
    job = start_torchrun(tmp_path / "job.log", 2, "prediction.py", *predict_args(reads, out, "-q"))
    wait_for_done_shards(job, out / rundir.WORK_DIR_NAME, 1)
    for extra in ((), ("--force",)):  # refused with or without --force, naming the live run
        assert prediction.main(predict_args(reads, out, "-q", *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another run" in err[0] and "pid" in err[0], err
    assert job.wait(timeout=120) == 0, (tmp_path / "job.log").read_text()
    assert outdir_files(out) == expected and not temp_files(out)


def test_final_merge_of_many_shards_keeps_few_files_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 shards (100 M reads) must not need 10,000 open files at once in the final merge."""
    from virnucpro import runstate

    rng = random.Random(4)
    keys = sorted(f"r{rng.randrange(10**6)}_chunk_{k}" for k in range(400))
    parts = []
    for i in range(10):
        part = tmp_path / f"shard_{i:06d}.consensus.tsv"
        part.write_text("".join(f"{key}\t{rng.random() < 0.5}\n" for key in keys[i::10]))
        parts.append(part)
    assemble.merge_sorted(parts, tmp_path / "flat.csv", "H\n")
    live, peak = [0], [0]
    real_open = open

    class Counted:
        def __init__(self, *args, **kwargs):
            self.handle = real_open(*args, **kwargs)
            live[0] += 1
            peak[0] = max(peak[0], live[0])

        def __iter__(self):
            return iter(self.handle)

        def close(self):
            self.handle.close()
            live[0] -= 1

    monkeypatch.setattr(assemble, "open", Counted, raising=False)
    assemble.merge_sorted(parts, tmp_path / "rounds.csv", "H\n", fan_in=3)
    assert (tmp_path / "rounds.csv").read_text() == (tmp_path / "flat.csv").read_text()
    assert (tmp_path / "flat.csv").read_text() == "H\n" + "".join(sorted("".join(p.read_text() for p in parts)
                                                                    .splitlines(True)))
    assert peak[0] == 3 and live[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*(p.name for p in parts), "flat.csv", "rounds.csv"])
