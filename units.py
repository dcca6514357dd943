"""Compatibility face of VirNucPro-FastESM: the original ``units.py`` names in one place.

``from units import *`` gives what the original module gave its scripts: every
original function (``split_fasta_chunk``, ``translate_dna``, ``identify_seq``,
``extract_DNABERT_S``, ``extract_esm``, ``split_fasta_file``, ``merge_data``, ...) with
the same argument order, ``MLPClassifier``, and the modules and classes the original
star import leaked (``SeqIO``, ``tqdm``, ``os``, ``torch``, ``AutoTokenizer``,
``AutoModel``).  The code lives in the :mod:`virnucpro` package, one module per
concern; new code should import from there.  This module imports torch and
transformers, as the original did.
"""
from __future__ import annotations

import os

import torch
from Bio import SeqIO
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from virnucpro import __version__
from virnucpro.classifier import (CHECKPOINT_FORMAT_VERSION, CHECKPOINT_KEYS, LABEL_MAP, MLPClassifier,
                                  describe_legacy_checkpoint, load_checkpoint, save_checkpoint)
from virnucpro.cli import (EXIT_FAILURE, EXIT_OK, EXIT_USAGE, CliArgumentParser, add_model_arguments,
                           positive_int, run_cli, setup_logging)
from virnucpro.defaults import DEFAULT_BATCH_TOKENS, DNABERT_S_MODEL, FASTESM_MODEL, TRUNCATION_SEQ_LENGTH
from virnucpro.embed import embed_dna, embed_proteins, token_budget_batches
from virnucpro.errors import CheckpointError, FeatureFileError, InputError, ModelLoadError, VirNucProError
from virnucpro.fasta import FastaRecord, check_input_file, read_fasta, split_fasta_file, write_fasta_record
from virnucpro.extraction import extract_DNABERT_S, extract_esm, merge_data
from virnucpro.features import load_dna_features, load_feature_object, load_protein_features
from virnucpro.files import TEXT_ENCODING, TEXT_ERRORS, atomic_torch_save, atomic_write, open_text
from virnucpro.frames import (CODON_TABLE, chunk_sequence, create_refseq_pro_list, identify_seq,
                              process_record, reverse_complement, select_frames, seq_in_reflist,
                              split_fasta_chunk, translate_dna)
from virnucpro.models import LoadedModel, load_dnabert_model, load_protein_model, resolve_device

__all__ = [
    # what the original's star import leaked
    "SeqIO", "tqdm", "os", "torch", "AutoTokenizer", "AutoModel",
    # the original functions
    "split_fasta_chunk", "create_refseq_pro_list", "reverse_complement", "translate_dna",
    "seq_in_reflist", "identify_seq", "process_record", "extract_DNABERT_S", "extract_esm",
    "split_fasta_file", "merge_data",
    # the original classifier (defined in train.py there)
    "MLPClassifier",
    # this project's additions
    "__version__", "DNABERT_S_MODEL", "FASTESM_MODEL", "TRUNCATION_SEQ_LENGTH", "DEFAULT_BATCH_TOKENS",
    "LABEL_MAP", "CHECKPOINT_FORMAT_VERSION", "CHECKPOINT_KEYS", "CODON_TABLE",
    "VirNucProError", "InputError", "FeatureFileError", "CheckpointError", "ModelLoadError",
    "FastaRecord", "check_input_file", "read_fasta", "open_text", "write_fasta_record", "atomic_write",
    "atomic_torch_save", "TEXT_ENCODING", "TEXT_ERRORS", "chunk_sequence", "select_frames",
    "resolve_device", "LoadedModel", "load_protein_model", "load_dnabert_model", "token_budget_batches",
    "embed_proteins", "embed_dna", "load_feature_object", "load_dna_features", "load_protein_features",
    "save_checkpoint", "load_checkpoint", "describe_legacy_checkpoint",
    "CliArgumentParser", "add_model_arguments", "positive_int", "setup_logging", "run_cli",
    "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE",
]
