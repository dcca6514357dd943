"""The per-chunk roll-up against the original's consensus of a results file with ties."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from virnucpro import assemble, ids, outputs, rundir
from virnucpro.results import chunk_best_scores, consensus_lines


def read_results(path: Path) -> tuple[list[str], np.ndarray]:
    """Frame ids and float32 (score1, score2) rows of a prediction_results.txt."""
    frame_ids, scores = [], []
    lines = path.read_text().splitlines()
    assert lines[0].split("\t") == list(outputs.RESULTS_COLUMNS)
    for line in lines[1:]:
        frame_id, _, score1, score2 = line.split("\t")
        frame_ids.append(frame_id)
        scores.append((np.float32(score1), np.float32(score2)))
    return frame_ids, np.array(scores, dtype=np.float32).reshape(-1, 2)


@pytest.fixture()
def consensus_dir(golden_dir: Path) -> Path:
    return golden_dir / "consensus"


def test_roll_up_matches_the_original_consensus_with_ties(consensus_dir):
    frame_ids, scores = read_results(consensus_dir / rundir.RESULTS_NAME)
    assert np.any(scores[:, 0] == scores[:, 1])  # the file holds ties (0.5 / 0.5), which count as virus
    lines = consensus_lines(chunk_best_scores(frame_ids, scores))
    expected = (consensus_dir / rundir.CONSENSUS_NAME).read_text()
    assert outputs.header_line(outputs.CONSENSUS_COLUMNS) + "".join(lines) == expected


def test_roll_up_per_shard_then_merged_matches_the_original(consensus_dir, tmp_path):
    """As prediction.py does it: each shard (whole input records) rolled up alone, then merged."""
    frame_ids, scores = read_results(consensus_dir / rundir.RESULTS_NAME)
    by_record: dict[str, list[int]] = {}
    for row, frame_id in enumerate(frame_ids):
        by_record.setdefault(ids.source_sequence_id(frame_id), []).append(row)
    records = list(by_record.values())
    parts = []
    for index in range(0, len(records), 3):  # three input records per shard
        rows = [r for record in records[index:index + 3] for r in record]
        part = tmp_path / f"shard_{index:06d}.consensus.tsv"
        part.write_text("".join(consensus_lines(chunk_best_scores([frame_ids[r] for r in rows], scores[rows]))))
        parts.append(part)
    assert len(parts) > 2
    target = tmp_path / rundir.CONSENSUS_NAME
    assemble.merge_sorted(parts, target, outputs.header_line(outputs.CONSENSUS_COLUMNS), fan_in=2)
    assert target.read_bytes() == (consensus_dir / rundir.CONSENSUS_NAME).read_bytes()
