"""The plotting engine: ``drew_fig.py``'s figure of the virus score along each predicted sequence.

:func:`run_plot` takes one frozen :class:`PlotRequest` (built by the script from its command line).
The per-chunk scores are read from prediction_results.txt (:func:`read_results`); the chunk size is
the request's, else the one the prediction run recorded in its OUTDIR (:func:`recorded_chunk_size`),
else inferred from prediction_summary.tsv (:func:`infer_chunk_size`), whose lengths also give the
exact chunk positions (:func:`chunk_spans`); :func:`draw` writes the PNG.  No torch.
"""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import outputs, rundir
from .errors import EXIT_OK, InputError, VirNucProError
from .files import atomic_write, open_text, require_file
from .frames import chunk_sequence
from .ids import parse_frame_id
from .runstate import read_manifest

log = logging.getLogger("virnucpro.drew_fig")

RESULTS_COLUMNS = outputs.RESULTS_COLUMNS
SUMMARY_NAME = rundir.SUMMARY_NAME
DEFAULT_FIGURE_NAME = rundir.FIGURE_NAME
SEQUENCE_COLUMN, LENGTH_COLUMN, CHUNKS_COLUMN = outputs.SUMMARY_COLUMNS[:3]
COMMON_CHUNK_SIZES = (300, 500)
VIRUS_COLOR = "red"
OTHER_COLOR = "darkblue"
DEFAULT_MAX_SEQUENCES = 5


@dataclass(frozen=True)
class PlotRequest:
    """What to plot (see ``drew_fig.py --help``)."""

    results: Path
    chunk_size: int | None = None   # None: the one the run recorded, else inferred from the summary
    output: Path | None = None      # None: prediction.png next to RESULTS; a folder: prediction.png in it
    max_sequences: int = DEFAULT_MAX_SEQUENCES


@dataclass
class SequenceScores:
    """Per-chunk best scores of one input sequence."""

    name: str
    virus: dict[int, float] = field(default_factory=dict)   # chunk -> max score2
    others: dict[int, float] = field(default_factory=dict)  # chunk -> max score1

    def add(self, chunk: int, score1: float, score2: float) -> None:
        self.virus[chunk] = max(self.virus.get(chunk, -math.inf), score2)
        self.others[chunk] = max(self.others.get(chunk, -math.inf), score1)

    def is_virus(self, chunk: int) -> bool:
        """The original consensus: max(score2) >= max(score1) over the chunk's frames."""
        return self.virus[chunk] >= self.others[chunk]


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------


def read_results(path: Path) -> dict[str, SequenceScores]:
    """Per-sequence chunk scores from prediction_results.txt, in file order."""
    require_file(path, "prediction results file")
    sequences: dict[str, SequenceScores] = {}
    with open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            if line_no == 1 and fields[0] == RESULTS_COLUMNS[0]:
                if tuple(fields) != RESULTS_COLUMNS:
                    raise InputError(f"{path}: line 1: header {fields} is not {list(RESULTS_COLUMNS)}")
                continue
            if len(fields) != len(RESULTS_COLUMNS):
                raise InputError(f"{path}: line {line_no}: expected {len(RESULTS_COLUMNS)} tab-separated "
                                       f"columns ({', '.join(RESULTS_COLUMNS)}), got {len(fields)}")
            frame = parse_frame_id(fields[0])
            if frame is None:
                raise InputError(f"{path}: line {line_no}: '{fields[0]}' is not a frame id "
                                       "(SEQUENCE_chunk_K followed by F1-F3 or R1-R3)")
            try:
                score1, score2 = float(fields[2]), float(fields[3])
            except ValueError:
                raise InputError(f"{path}: line {line_no}: scores '{fields[2]}', '{fields[3]}' "
                                       "are not numbers") from None
            if not (0.0 <= score1 <= 1.0 and 0.0 <= score2 <= 1.0):
                raise InputError(f"{path}: line {line_no}: scores must lie in [0, 1]")
            sequences.setdefault(frame.sequence, SequenceScores(frame.sequence)).add(frame.chunk, score1, score2)
    if not sequences:
        raise InputError(f"{path}: no prediction rows (no chunk had a stop-free frame?)")
    return sequences


def read_summary(path: Path) -> dict[str, tuple[int, int]]:
    """Sequence_ID -> (Length, Chunks) from prediction_summary.tsv."""
    lengths: dict[str, tuple[int, int]] = {}
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = {SEQUENCE_COLUMN, LENGTH_COLUMN, CHUNKS_COLUMN} - set(reader.fieldnames or ())
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            try:
                lengths[row[SEQUENCE_COLUMN]] = (int(row[LENGTH_COLUMN]), int(row[CHUNKS_COLUMN]))
            except (TypeError, ValueError):
                raise InputError(f"{path}: line {reader.line_num}: Length and Chunks must be "
                                       "integers") from None
    return lengths


def infer_chunk_size(summary: dict[str, tuple[int, int]], path: Path) -> int:
    """The chunk size c with ceil(Length / c) == Chunks for every sequence."""
    low, high = 1, math.inf
    for name, (length, chunks) in summary.items():
        if length <= 0 or chunks <= 0:
            continue
        # ceil(L / c) == n  <=>  L / n <= c < L / (n - 1)
        low = max(low, -(-length // chunks))
        if chunks > 1:
            high = min(high, -(-length // (chunks - 1)) - 1)
    if low > high:
        raise InputError(f"{path}: lengths and chunk counts fit no single chunk size; "
                               "pass --chunk-size")
    if low == high:
        return int(low)
    common = [c for c in COMMON_CHUNK_SIZES if low <= c <= high]
    if high == math.inf:
        # every sequence is a single chunk: any size >= low draws the same picture
        return common[0] if common else int(low)
    if len(common) == 1:
        return common[0]
    raise InputError(f"{path}: cannot tell the chunk size (anything from {low} to {int(high)} fits); "
                           "pass --chunk-size")


def recorded_chunk_size(results: Path) -> int | None:
    """The chunk size in the run manifest prediction.py keeps in the OUTDIR of ``results``, if any."""
    manifest = rundir.RunDir(results.parent).manifest
    if not manifest.is_file():
        return None
    try:
        value = read_manifest(manifest).get("chunk_size")
    except VirNucProError as exc:  # a damaged manifest: the chunk size is inferred instead
        log.warning("%s; not used", exc)
        return None
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    log.warning("%s: chunk_size %r is not a positive integer; not used", manifest, value)
    return None


# ---------------------------------------------------------------------------
# Plotting
# ---------------------------------------------------------------------------


def chunk_spans(chunks: int, chunk_size: int, length: int | None) -> list[tuple[int, int]]:
    """(start, end) of every chunk: exact when the sequence length is known."""
    if length is None:
        return [(k * chunk_size, (k + 1) * chunk_size) for k in range(chunks)]
    # chunk_sequence only slices, so a range yields the positions of each chunk
    return [(span.start, span.stop) for span in chunk_sequence(range(length), chunk_size)]


def draw(sequences: list[SequenceScores], chunk_size: int, summary: dict[str, tuple[int, int]],
         output: Path) -> None:
    """One panel per sequence: each chunk a segment over its bases at its virus score, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker as ticker
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(nrows=len(sequences), ncols=1, figsize=(20, 2.2 * len(sequences)), squeeze=False)
    try:
        for ax, scores in zip(axes[:, 0], sequences):
            length, chunks = summary.get(scores.name, (None, max(scores.virus)))
            chunks = max(chunks, max(scores.virus))
            spans = chunk_spans(chunks, chunk_size, length if length and length > 0 else None)
            for chunk in sorted(scores.virus):
                if chunk > len(spans):
                    log.warning("%s: chunk %d is beyond the sequence length; not drawn", scores.name, chunk)
                    continue
                start, end = spans[chunk - 1]
                color = VIRUS_COLOR if scores.is_virus(chunk) else OTHER_COLOR
                ax.plot([start, end], [scores.virus[chunk]] * 2, color=color, linewidth=2,
                        solid_capstyle="butt")
            ax.axhline(0.5, color="gray", linestyle=":", linewidth=1)
            right = length if length else chunks * chunk_size
            ax.set_xlim(0, right)
            ax.set_ylim(-0.05, 1.05)
            ax.set_title(scores.name, fontsize=14, fontweight="bold")
            ax.set_xlabel(f"Position (bp; {chunk_size} bp chunks)", fontsize=11, color="dimgray")
            ax.set_ylabel("Virus score", fontsize=11, color="dimgray")
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
            ax.xaxis.set_major_formatter(ticker.ScalarFormatter(useOffset=False, useMathText=False))
            ax.ticklabel_format(style="plain", axis="x")
        legend = [Line2D([0], [0], color=VIRUS_COLOR, lw=2, label="virus"),
                  Line2D([0], [0], color=OTHER_COLOR, lw=2, label="others")]
        axes[0, 0].legend(handles=legend, loc="upper right", frameon=False)
        fig.tight_layout()
        with atomic_write(output, "wb") as handle:
            fig.savefig(handle, format="png", bbox_inches="tight")
    finally:
        plt.close(fig)


def run_plot(request: PlotRequest) -> int:
    """Read the results (and the summary beside them), find the chunk size, draw the figure."""
    results = request.results
    scores = read_results(results)
    summary_path = results.parent / SUMMARY_NAME
    summary = read_summary(summary_path) if summary_path.is_file() else {}
    chunk_size = request.chunk_size
    if chunk_size is None:
        chunk_size = recorded_chunk_size(results)
        if chunk_size is not None:
            log.info("chunk size %d (recorded by prediction.py)", chunk_size)
    if chunk_size is None:
        if not summary:
            raise InputError(f"{results}: cannot infer the chunk size without {summary_path}; "
                                   "pass --chunk-size (300 or 500, as given to prediction.py)")
        chunk_size = infer_chunk_size(summary, summary_path)
        log.info("chunk size %d (inferred from %s)", chunk_size, summary_path)
    shown = list(scores.values())[: request.max_sequences]
    if len(scores) > len(shown):
        log.info("plotting the first %d of %d sequences (--max-sequences)", len(shown), len(scores))
    output = request.output if request.output is not None else results.parent / DEFAULT_FIGURE_NAME
    if output.is_dir():
        output = output / DEFAULT_FIGURE_NAME
    draw(shown, chunk_size, summary, output)
    log.info("figure written to %s", output)
    return EXIT_OK
