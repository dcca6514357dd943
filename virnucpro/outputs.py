"""File names and column lists that more than one script (or a user) relies on.

Prediction's columns (the names of everything under a prediction OUTDIR are
:mod:`virnucpro.rundir`'s), evaluate.py's outputs, training data (``make_train_dataset``,
``features_extract.py``, ``train.py``) and the classifier checkpoint name are defined here once.
"""
from __future__ import annotations

from pathlib import Path

#: The key under which checkpoints, feature files and the prediction manifest record
#: the version of this program that wrote them (information; never compared).
VERSION_KEY = "virnucpro_version"

# --- prediction output columns (the file names are virnucpro.rundir's) -----------
RESULTS_COLUMNS = ("Sequence_ID", "Prediction", "score1", "score2")
CONSENSUS_COLUMNS = ("Modified_ID", "Is_Virus")
SUMMARY_COLUMNS = ("Sequence_ID", "Length", "Chunks", "Scored_Chunks", "Viral_Chunks",
                   "Viral_Fraction", "Max_Virus_Score", "Mean_Virus_Score", "Prediction")
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
GENBANK_SUFFIX = "genomic.gbff.gz"  # the RefSeq annotations download_data.py fetches, make_train_dataset pairs
GENOME_FASTA_SUFFIX = "genomic.fna.gz"  # the RefSeq genome sequences they annotate
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
