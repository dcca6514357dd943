"""Every file name and column list that more than one script (or a user) relies on.

Prediction (``prediction.py`` writes them, ``drew_fig.py`` and users read them),
training data (``make_train_dataset``, ``features_extract.py``, ``train.py``) and
the classifier checkpoint name are defined here once.
"""
from __future__ import annotations

from pathlib import Path

#: The key under which checkpoints, feature files and the prediction manifest record
#: the version of this program that wrote them (information; never compared).
VERSION_KEY = "virnucpro_version"

# --- prediction OUTDIR ------------------------------------------------------
RESULTS_NAME = "prediction_results.txt"
RESULTS_COLUMNS = ("Sequence_ID", "Prediction", "score1", "score2")
CONSENSUS_NAME = "prediction_results_highestscore.csv"
CONSENSUS_COLUMNS = ("Modified_ID", "Is_Virus")
SUMMARY_NAME = "prediction_summary.tsv"
SUMMARY_COLUMNS = ("Sequence_ID", "Length", "Chunks", "Scored_Chunks", "Viral_Chunks",
                   "Viral_Fraction", "Max_Virus_Score", "Mean_Virus_Score", "Prediction")
#: The input records called ``virus`` in the summary, headers and sequences as in the input.
VIRAL_FASTA_NAME = "viral_sequences.fa"
VIRAL_CALL = "virus"  # the Prediction of a viral sequence in prediction_summary.tsv
FIGURE_NAME = "prediction.png"
WORK_DIR_NAME = ".virnucpro_work"
LOCK_NAME = ".virnucpro.lock"  # in OUTDIR, held while a run is live
MANIFEST_NAME = "manifest.json"
FEATURES_DIR_NAME = "features"
FASTA_SUFFIXES = (".fa", ".fasta", ".fas", ".fna", ".ffn", ".fsa", ".seq", ".txt", ".fastq", ".fq")


def header_line(columns: tuple[str, ...]) -> str:
    """A tab-separated header line."""
    return "\t".join(columns) + "\n"


def input_stem(path: Path) -> str:
    """The input's name without .gz and a FASTA or FASTQ suffix: reads.fa.gz -> reads."""
    name = path.name
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in FASTA_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def chunked_fasta_name(stem: str, chunk_size: int) -> str:
    """The chunk FASTA (the original's name)."""
    return f"{stem}_chunked{chunk_size}.fa"


def identified_nucleotide_name(stem: str) -> str:
    """The kept frames' DNA (the original's name)."""
    return f"{stem}_identified_nucleotide.fa"


def identified_protein_name(stem: str) -> str:
    """The kept frames' proteins (the original's name)."""
    return f"{stem}_identified_protein.faa"


def final_outputs(outdir: Path, stem: str, chunk_size: int) -> list[Path]:
    """Every final file of a prediction run, in the order they are made."""
    return [outdir / chunked_fasta_name(stem, chunk_size), outdir / identified_nucleotide_name(stem),
            outdir / identified_protein_name(stem), outdir / RESULTS_NAME, outdir / CONSENSUS_NAME,
            outdir / SUMMARY_NAME, outdir / VIRAL_FASTA_NAME]


def shard_features_name(index: int) -> str:
    """A merged feature file kept by ``prediction.py --keep-features``."""
    return f"shard_{index:06d}_merged.pt"


SHARD_FEATURES_GLOB = "shard_*_merged.pt"

# --- evaluate.py OUTDIR ---------------------------------------------------------
EVALUATION_INPUT_NAME = "labelled_input.fa"  # the viral then the host records, scored by every model
EVALUATION_TSV_NAME = "evaluation.tsv"
EVALUATION_JSON_NAME = "evaluation.json"
AGREEMENT_TSV_NAME = "agreement.tsv"
ROC_FIGURE_NAME = "roc_curves.png"
PR_FIGURE_NAME = "precision_recall_curves.png"

# --- classifier ---------------------------------------------------------------


def checkpoint_name(chunk_size: int) -> str:
    """The default classifier checkpoint for a chunk size."""
    return f"{chunk_size}_model_fastesm650.pth"


TRAINING_LOG_NAME = "MLP_log.txt"
HOLDOUT_IDS_SUFFIX = ".holdout_ids.txt"


def holdout_ids_path(checkpoint: Path) -> Path:
    """The row ids of train.py's hold-out split, beside the checkpoint: 300_model.holdout_ids.txt."""
    return checkpoint.with_suffix(HOLDOUT_IDS_SUFFIX)

# --- training data ------------------------------------------------------------
IDENTIFIED_NUCLEOTIDE_SUFFIX = "identified_nucleotide.fa"
IDENTIFIED_PROTEIN_SUFFIX = "identified_protein.fa"
MERGE_DIR_NAME = "data_merge"
VIRAL_MERGED_DIR_NAME = "viral.1.1_merged"  # the folder train.py reads as viral
MERGED_SUFFIX = "_merged.pt"


def dna_features_name(index: int) -> str:
    """DNABERT-S features of split ``output_{index}.fa`` (the original's name)."""
    return f"output_{index}_DNABERT_S.pt"


def protein_features_name(index: int) -> str:
    """Protein features of split ``output_{index}.fa`` (the original's name)."""
    return f"output_{index}_ESM.pt"


def merged_features_name(index: int, prefix: str = "") -> str:
    """Merged features of split ``output_{index}.fa``."""
    return f"{prefix}output_{index}{MERGED_SUFFIX}"
