"""Scale-out under torchrun (virnucpro.distributed): helpers, and real multi-rank runs on CPU (gloo).

The multi-rank tests start ``python -m torch.distributed.run --standalone`` with the tiny
stand-in models; each launch costs a few seconds (interpreters, imports), so they are few
and marked slow.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import features_extract
from test_features_extract import SPF, copy_identified, merged_files
from virnucpro import distributed
from virnucpro.errors import InputError

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
              and (str(REPO) in line or "virnucpro" in line)]
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
    assert user == (2, "virnucpro.errors:InputError", "reads.fa: record r7 is bad") and bug[0] == 1
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
    shares = [line for line in done.stderr.splitlines() if "due split file(s) for this rank" in line]
    assert sorted(line.split("]")[0] for line in shares) == ["[rank 0/2", "[rank 1/2"]
    assert sum(int(line.split("INFO: ")[1].split()[0]) for line in shares) == 6


@pytest.mark.slow
def test_features_extract_user_error_on_two_ranks_is_one_line(feature_data: Path) -> None:
    for path in feature_data.glob("viral*"):
        path.unlink()
    done = torchrun(2, "features_extract.py", "--data-dir", feature_data, "--device", "cpu", "-q", timeout=60)
    assert done.returncode != 0
    lines = error_lines(done.stderr, "features_extract.py")
    assert len(lines) == 1 and "viral" in lines[0] and "[rank" not in lines[0], done.stderr
    assert_no_traceback_of_ours(done.stderr)
