"""Default model ids and sizes shared by the library and the command lines (no torch)."""
from __future__ import annotations

DNABERT_S_MODEL = "zhihan1996/DNABERT-S"
DNABERT_S_DIM = 768
FASTESM_MODEL = "Synthyra/FastESM2_650"
#: The protein model of the original VirNucPro (its published 300_model.pth / 500_model.pth).
ESM2_3B_MODEL = "facebook/esm2_t36_3B_UR50D"
#: Residues of a protein pooled into its embedding (positions 1..min(L, 1024)).
TRUNCATION_SEQ_LENGTH = 1024
#: The longest chunk LENGTH prediction accepts: a frame's protein (LENGTH / 3 residues) is
#: embedded whole up to TRUNCATION_SEQ_LENGTH residues, and a chunk's DNA is embedded
#: whole (attention memory grows with the square of its length).
MAX_CHUNK_LENGTH = 3 * TRUNCATION_SEQ_LENGTH
#: Padded tokens in one language-model batch (CPU; also the default of ``--batch-tokens`` there).
DEFAULT_BATCH_TOKENS = 16384
#: Padded tokens per batch on CUDA (a candidate for the GPU verification to tune: 32k-64k).
CUDA_BATCH_TOKENS = 32768
#: Precisions the language models can run in (``--protein-precision`` / ``--dna-precision``).
PROTEIN_PRECISIONS = ("fp32", "fp16", "bf16")
DNA_PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
#: Defaults on CUDA (on the CPU both run in fp32); the GPU verification changes these once it
#: has measured label agreement with fp32 (target >= 99.9 %).
CUDA_PROTEIN_PRECISION = "fp16"
CUDA_DNA_PRECISION = "fp32"
#: Classifier outputs: class index -> label written in prediction_results.txt.
OTHERS_CLASS, VIRUS_CLASS = 0, 1
OTHERS_LABEL, VIRUS_LABEL = "others", "virus"
LABEL_MAP = {OTHERS_CLASS: OTHERS_LABEL, VIRUS_CLASS: VIRUS_LABEL}
#: The Prediction of a sequence none of whose chunks has a stop-free frame (prediction_summary.tsv).
NO_CALL = "no_call"
#: How train.py may split the hold-out: by source sequence, or per row as the original.
SPLIT_CHOICES = ("sequence", "record")
#: How the protein model's weights are loaded (``--esm-loader``): its own code, else transformers'
#: own ESM (``auto``); only its own code (``remote``); only transformers' ESM (``native``).
ESM_LOADERS = ("auto", "remote", "native")
