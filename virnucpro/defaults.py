"""Default model ids and sizes shared by the library and the command lines (no torch)."""
from __future__ import annotations

DNABERT_S_MODEL = "zhihan1996/DNABERT-S"
FASTESM_MODEL = "Synthyra/FastESM2_650"
#: Residues of a protein pooled into its embedding (positions 1..min(L, 1024)).
TRUNCATION_SEQ_LENGTH = 1024
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
LABEL_MAP = {0: "others", 1: "virus"}
VIRUS_CLASS = 1
