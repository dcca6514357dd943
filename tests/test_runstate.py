"""The run state of a prediction OUTDIR: merging many shards in rounds, the version in the manifest."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro import __version__, assemble, outputs, rundir, runstate

REPO = Path(__file__).resolve().parent.parent
HEADER = outputs.header_line(outputs.CONSENSUS_COLUMNS)


def write_parts(folder: Path, count: int, seed: int = 1) -> tuple[list[Path], list[str]]:
    """``count`` sorted consensus shard files with random chunk ids; returns them and all their lines."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts, lines = [], []
    for index in range(count):
        rows = sorted(f"r{rng.randrange(10 ** 6):06d}_{index}_chunk_{k}\t{rng.choice(['True', 'False'])}\n"
                      for k in range(rng.randint(0, 4)))
        path = rundir.WorkDir(folder).shard(index, rundir.CONSENSUS_PART)
        path.write_text("".join(rows))
        parts.append(path)
        lines.extend(rows)
    return parts, lines


@pytest.mark.parametrize("count, fan_in", [(0, 2), (1, 2), (5, 64), (20, 3), (100, 2), (130, 64)])
def test_merge_in_rounds_gives_the_one_merge_result(tmp_path, count, fan_in):
    parts, lines = write_parts(tmp_path / "work", count)
    target = tmp_path / "out" / rundir.CONSENSUS_NAME
    assemble.merge_sorted(parts, target, HEADER, fan_in=fan_in)
    expected = HEADER + "".join(sorted(lines, key=lambda line: line.split("\t", 1)[0]))
    assert target.read_text() == expected
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == sorted(p.name for p in parts)  # no leftovers


def test_merge_of_1100_shards_stays_under_a_low_open_files_limit(tmp_path):
    """1,100 shard files under a limit of 200 open files: one merge of all would fail with EMFILE."""
    parts, lines = write_parts(tmp_path / "work", 1100)
    target = tmp_path / rundir.CONSENSUS_NAME
    code = f"""
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (200, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from virnucpro import assemble
parts = sorted(Path({str(tmp_path / 'work')!r}).glob('shard_*.consensus.tsv'))
assemble.merge_sorted(parts, Path({str(target)!r}), {HEADER!r})
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert target.read_text() == HEADER + "".join(sorted(lines, key=lambda line: line.split("\t", 1)[0]))


class _Index:
    """Stands in for the shard index open_run records (its input hash)."""

    sha256 = "0" * 64

    def save(self, work: Path) -> None:
        pass


def test_manifest_records_the_version_without_making_it_a_setting(tmp_path):
    outdir = tmp_path / "out"
    settings = {"manifest_version": runstate.MANIFEST_VERSION, "chunk_size": 300}
    work, _, _ = runstate.open_run(rundir.RunDir(outdir, "reads", 300), settings, False, lambda work: _Index())
    manifest_path = work / rundir.MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    assert manifest[outputs.VERSION_KEY] == __version__
    manifest[outputs.VERSION_KEY] = "0.0.1"  # begun by another version: resuming is still allowed
    manifest_path.write_text(json.dumps(manifest))
    again = runstate.open_run(rundir.RunDir(outdir, "reads", 300), settings, False, lambda work: _Index())
    assert again[::2] == (work, False)
    with pytest.raises(runstate.VirNucProError, match="chunk_size"):
        runstate.open_run(rundir.RunDir(outdir, "reads", 300), {**settings, "chunk_size": 500}, False,
                          lambda work: _Index())
