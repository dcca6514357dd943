"""Score DNA sequences as viral or not with VirNucPro-FastESM.

    python prediction.py INPUT.fasta 300 OUTDIR [options]

Each sequence is cut into LENGTH-bp chunks, every chunk is translated in six frames,
the stop-free frames are embedded with DNABERT-S (DNA) and FastESM2 (protein), and
the classifier scores every frame.  OUTDIR receives prediction_results.txt (one row
per frame), prediction_results_highestscore.csv (one row per chunk) and
prediction_summary.tsv (one row per input sequence).

Records stream through in shards, so memory stays flat whatever the input size.
A run that is killed resumes from its finished shards when rerun with the same
command; outputs are only ever renamed into place once complete.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from virnucpro import cli, outputs
from virnucpro.shards import DEFAULT_SHARD_CHUNKS
from virnucpro.errors import CheckpointError, InputError

log = logging.getLogger("virnucpro.predict")

PROG = "prediction.py"


def build_parser() -> cli.CliArgumentParser:
    """The command line of prediction.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Identify viral DNA among short sequences (VirNucPro with FastESM2_650).",
        epilog="Example: python prediction.py reads.fasta 300 results/  "
               "(uses 300_model_fastesm650.pth; train one with train.py)",
    )
    parser.add_argument("input", type=Path, help="DNA FASTA file to score, plain or gzip-compressed")
    parser.add_argument("length", type=cli.positive_int, metavar="LENGTH",
                        help="chunk length in bp (300 or 500; must match the model's chunk size)")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR", help="directory for the results (created)")
    parser.add_argument("--model", type=Path, default=None,
                        help="classifier checkpoint (default: {LENGTH}_model_fastesm650.pth in the "
                             "current directory, then next to this script)")
    cli.add_model_arguments(parser)
    parser.add_argument("--shard-size", type=cli.positive_int, default=DEFAULT_SHARD_CHUNKS,
                        help="chunks per shard: the unit of streaming and of resuming after a crash")
    parser.add_argument("--keep-features", action="store_true",
                        help="keep the merged feature files in OUTDIR/features/")
    parser.add_argument("--force", action="store_true",
                        help="discard earlier results of this program in OUTDIR and start over")
    return parser



def find_checkpoint(model: Path | None, length: int) -> Path:
    """``--model``, else the default checkpoint in the current directory, then next to this script."""
    if model is not None:
        return model
    name = outputs.checkpoint_name(length)
    for candidate in (Path.cwd() / name, Path(__file__).resolve().parent / name):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"no classifier checkpoint {name} in the current directory or next to {PROG}; "
        f"pass --model PATH, or train one: python train.py --chunk-size {length}")


def prepare_outdir(outdir: Path) -> None:
    """Create OUTDIR, or say why it cannot be used."""
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: OUTDIR exists and is not a directory")
    if outdir.suffix == ".pth" and not outdir.exists():
        raise InputError(f"{outdir}: the third argument is OUTDIR (a directory); pass a "
                               "checkpoint with --model")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        probe = outdir / f".write_test_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{outdir}: OUTDIR is not writable ({exc.strerror or exc})") from None



def run_settings(args: argparse.Namespace, checkpoint: Path, device_type: str) -> dict:
    """Everything that determines the output bytes; a rerun must match it to resume."""
    import torch

    from virnucpro.embed import default_batch_tokens
    from virnucpro.files import file_sha256
    from virnucpro.models import resolve_precision
    from virnucpro.runstate import MANIFEST_VERSION

    return {
        "manifest_version": MANIFEST_VERSION,
        "input_sha256": file_sha256(args.input),
        "chunk_size": args.length,
        "checkpoint_sha256": file_sha256(checkpoint),
        "esm_model": str(args.esm_model),
        "dnabert_model": str(args.dnabert_model),
        "device_type": device_type,
        "protein_precision": resolve_precision("protein", args.protein_precision, torch.device(device_type)),
        "dna_precision": resolve_precision("dna", args.dna_precision, torch.device(device_type)),
        "compile": bool(args.compile),
        "batch_tokens": args.batch_tokens or default_batch_tokens(device_type),
        "shard_size": args.shard_size,
        "keep_features": bool(args.keep_features),
    }


def predict(args: argparse.Namespace) -> int:
    """Score ``args.input`` into ``args.outdir``, resuming from finished shards."""
    from virnucpro.fasta import check_input_file, read_fasta
    from virnucpro.models import resolve_device
    from virnucpro.results import shard_path, write_shard
    from virnucpro.runstate import finalise, open_run
    from virnucpro.scoring import load_classifier, load_scorer
    from virnucpro.shards import iter_shards, preprocess_shard

    check_input_file(args.input)
    prepare_outdir(args.outdir)
    checkpoint = find_checkpoint(args.model, args.length)
    classifier, meta = load_classifier(checkpoint, args.length)
    device = resolve_device(args.device)
    # A first pass validates the whole input, so bad records are reported before models load.
    for _ in read_fasta(args.input, alphabet="dna"):
        pass
    stem = outputs.input_stem(args.input)
    settings = run_settings(args, checkpoint, device.type)
    work, finished = open_run(args.outdir, settings, args.force, stem, args.length)
    if finished:
        log.info("%s is complete already (use --force to recompute)", args.outdir)
        return cli.EXIT_OK
    scorer = load_scorer(checkpoint, classifier, meta, device, dnabert_model=args.dnabert_model,
                         esm_model=args.esm_model, protein_precision=args.protein_precision,
                         dna_precision=args.dna_precision, compile_layers=args.compile,
                         batch_tokens=args.batch_tokens, progress=not args.quiet)
    features_dir = args.outdir / outputs.FEATURES_DIR_NAME if args.keep_features else None

    def prepare(index, records):
        return scorer.prepare(preprocess_shard(index, records, args.length))

    def write(prepared, features) -> None:
        shard = prepared.shard
        probabilities = scorer.probabilities(features)
        write_shard(work, shard, probabilities, meta["label_map"], features, features_dir, meta)
        log.info("shard %d: %d sequences, %d chunks, %d frames scored", shard.index, len(shard.sequences),
                 shard.chunk_count, len(shard.frame_ids))

    # Three stages overlap: the prefetch thread reads, frames and tokenises shard i+1 while
    # this thread embeds shard i and the writer thread scores and writes shard i-1.
    shard_count = 0
    with ThreadPoolExecutor(max_workers=1) as prefetch, ThreadPoolExecutor(max_workers=1) as writer:
        pending = written = None

        def embed_and_hand_over(prepared):
            features = scorer.features(prepared)
            if written is not None:
                written.result()  # one shard in the writer at a time; its errors surface here
            return writer.submit(write, prepared, features)

        for index, records in iter_shards(args.input, args.length, args.shard_size):
            shard_count = index + 1
            if shard_path(work, index, "done").is_file():
                continue
            next_shard = prefetch.submit(prepare, index, records)
            if pending is not None:
                written = embed_and_hand_over(pending.result())
            pending = next_shard
        if pending is not None:
            written = embed_and_hand_over(pending.result())
        if written is not None:
            written.result()
    finalise(args.outdir, work, shard_count, stem, args.length)
    log.info("results in %s", args.outdir)
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python prediction.py INPUT LENGTH OUTDIR [options]``."""
    return cli.script_main(PROG, build_parser(), predict, argv)


if __name__ == "__main__":
    sys.exit(main())
