"""Every path under a prediction OUTDIR: the one place their names are spelled (no torch).

``OUTDIR/`` holds the final outputs (the original's names), the lock of a live run, the
kept feature files (``features/``) and the work directory ``.virnucpro_work/``: the run
manifest, the shard index (and its log, written while the input pass runs), a piped input's spool, the duplicate-id spill files and each
shard's files with its ``done`` marker.  :class:`RunDir` names them for one input stem
and chunk size; :class:`WorkDir` names what lies in the work directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# --- final outputs (users and drew_fig.py read these) -------------------------------
RESULTS_NAME = "prediction_results.txt"
CONSENSUS_NAME = "prediction_results_highestscore.csv"
SUMMARY_NAME = "prediction_summary.tsv"
#: The input records called ``virus`` in the summary, headers and sequences as in the input.
VIRAL_FASTA_NAME = "viral_sequences.fa"
FIGURE_NAME = "prediction.png"

# --- run state -----------------------------------------------------------------------
WORK_DIR_NAME = ".virnucpro_work"
LOCK_NAME = ".virnucpro.lock"  # in OUTDIR, held while a run is live
MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.json"
#: The shard index as the input pass lays it out: one JSON line per shard, read by every rank meanwhile.
INDEX_LOG_NAME = "index.jsonl"
#: A piped input is copied here during the input pass, so shards can be read again.
SPOOL_NAME = "input.spool"
FEATURES_DIR_NAME = "features"
#: The files of one shard, each the shard's piece of one final output.
CHUNKED_PART, NUCLEOTIDE_PART, PROTEIN_PART = "chunked.fa", "nucleotide.fa", "protein.faa"
RESULTS_PART, CONSENSUS_PART, SUMMARY_PART = "results.tsv", "consensus.tsv", "summary.tsv"
SHARD_PARTS = (CHUNKED_PART, NUCLEOTIDE_PART, PROTEIN_PART, RESULTS_PART, CONSENSUS_PART, SUMMARY_PART)
DONE_PART = "done"
_SHARD_PREFIX = "shard_"
_SPILL_PREFIX = "dupcheck_"
_SHARD_FEATURES_SUFFIX = "_merged.pt"


def spill_name(bucket: int) -> str:
    """The duplicate-id spill file of one hash bucket."""
    return f"{_SPILL_PREFIX}{bucket:03d}.bin"


def shard_features_name(index: int) -> str:
    """A merged feature file kept by ``prediction.py --keep-features``."""
    return f"{_SHARD_PREFIX}{index:06d}{_SHARD_FEATURES_SUFFIX}"


SHARD_FEATURES_GLOB = f"{_SHARD_PREFIX}*{_SHARD_FEATURES_SUFFIX}"


@dataclass(frozen=True)
class WorkDir:
    """The work directory of a prediction run and the names of what lies in it."""

    path: Path

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST_NAME

    @property
    def index(self) -> Path:
        return self.path / INDEX_NAME

    @property
    def index_log(self) -> Path:
        return self.path / INDEX_LOG_NAME

    @property
    def spool(self) -> Path:
        return self.path / SPOOL_NAME

    def spill(self, bucket: int) -> Path:
        """The duplicate-id spill file of ``bucket``."""
        return self.path / spill_name(bucket)

    def shard(self, index: int, part: str) -> Path:
        """One file of a shard (``part``: one of :data:`SHARD_PARTS` or :data:`DONE_PART`)."""
        return self.path / f"{_SHARD_PREFIX}{index:06d}.{part}"

    def done(self, index: int) -> Path:
        """The ``done`` marker of a shard: the size and SHA-256 of each of its files."""
        return self.shard(index, DONE_PART)

    def shard_files(self) -> list[Path]:
        """Every shard file present, markers included."""
        return sorted(self.path.glob(f"{_SHARD_PREFIX}*"))

    def done_markers(self) -> list[Path]:
        """The ``done`` markers present."""
        return sorted(self.path.glob(f"{_SHARD_PREFIX}*.{DONE_PART}"))

    def state_files(self) -> tuple[Path, ...]:
        """The files of the run state a planted link or special file must never stand in for."""
        return self.manifest, self.index, self.index_log, self.spool

    def own_file_patterns(self) -> tuple[str, ...]:
        """Glob patterns of everything this program writes here (``--force`` removes these and nothing else)."""
        from .files import TEMP_SUFFIX

        return (MANIFEST_NAME, INDEX_NAME, INDEX_LOG_NAME, SPOOL_NAME, f"{_SHARD_PREFIX}*", f"{_SPILL_PREFIX}*.bin",
                f".*{TEMP_SUFFIX}")


@dataclass(frozen=True)
class RunDir:
    """A prediction OUTDIR for one input stem and chunk size: every path under it."""

    outdir: Path
    stem: str = ""
    chunk_size: int = 0

    @property
    def work(self) -> WorkDir:
        return WorkDir(self.outdir / WORK_DIR_NAME)

    @property
    def lock(self) -> Path:
        return self.outdir / LOCK_NAME

    @property
    def manifest(self) -> Path:
        return self.work.manifest

    @property
    def features_dir(self) -> Path:
        return self.outdir / FEATURES_DIR_NAME

    def shard_features(self, index: int) -> Path:
        """The kept merged feature file of a shard."""
        return self.features_dir / shard_features_name(index)

    @property
    def chunked_fasta(self) -> Path:
        """The chunk FASTA (the original's name)."""
        return self.outdir / f"{self._stem()}_chunked{self.chunk_size}.fa"

    @property
    def identified_nucleotide(self) -> Path:
        """The kept frames' DNA (the original's name)."""
        return self.outdir / f"{self._stem()}_identified_nucleotide.fa"

    @property
    def identified_protein(self) -> Path:
        """The kept frames' proteins (the original's name)."""
        return self.outdir / f"{self._stem()}_identified_protein.faa"

    @property
    def results(self) -> Path:
        return self.outdir / RESULTS_NAME

    @property
    def consensus(self) -> Path:
        return self.outdir / CONSENSUS_NAME

    @property
    def summary(self) -> Path:
        return self.outdir / SUMMARY_NAME

    @property
    def viral_fasta(self) -> Path:
        return self.outdir / VIRAL_FASTA_NAME

    @property
    def figure(self) -> Path:
        return self.outdir / FIGURE_NAME

    def final_outputs(self) -> list[Path]:
        """Every final file of the run, in the order they are made."""
        return [self.chunked_fasta, self.identified_nucleotide, self.identified_protein, self.results,
                self.consensus, self.summary, self.viral_fasta]

    def _stem(self) -> str:
        if not self.stem or not self.chunk_size:
            raise ValueError("the output names need the input's stem and the chunk size")
        return self.stem
