"""Evaluate classifiers side by side on the same labelled sequences.

    python evaluate.py --viral viral_test.fa --host host_test.fa --model A.pth --model B.pth --outdir eval/
    python evaluate.py --features data/data_merge --ids 300_model_fastesm650.holdout_ids.txt \\
        --model 300_model_fastesm650.pth --outdir eval/

With ``--viral``/``--host`` (FASTA or FASTQ, plain or gzip) the records are written once
to OUTDIR/labelled_input.fa and the prediction pipeline (``prediction.py``) scores them
with each model into OUTDIR/<model name>/, with the language models recorded in that
model's checkpoint (``--esm-model``/``--dnabert-model`` override them for every model);
a rerun resumes or reuses those runs.  With ``--features`` the merged feature files
(as ``train.py`` reads them) are scored directly by every model sharing their feature
space; ``--ids`` keeps only the rows listed (e.g. the hold-out ids ``train.py`` writes).

OUTDIR receives evaluation.tsv (per model and level: accuracy, precision, recall, F1,
MCC, AUROC, AUPRC, confusion matrix), agreement.tsv (per pair of models), evaluation.json
(both, with the settings) and roc_curves.png / precision_recall_curves.png.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from virnucpro import cli, outputs
from virnucpro.errors import InputError, VirNucProError

log = logging.getLogger("virnucpro.evaluate")

PROG = "evaluate.py"
VIRAL_LABEL, HOST_LABEL = 1, 0


def build_parser() -> cli.CliArgumentParser:
    """The command line of evaluate.py."""
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Compare VirNucPro classifiers on the same labelled sequences or feature files.",
        epilog="Example: python evaluate.py --viral viral_test.fa --host host_test.fa --model "
               "300_model_fastesm650.pth --model 300_model_esm2_3b.pth --outdir eval/",
    )
    data = parser.add_argument_group("labelled data (either sequences or feature files)")
    data.add_argument("--viral", type=Path, help="viral sequences (FASTA or FASTQ, plain or gzip)")
    data.add_argument("--host", type=Path, help="host (non-viral) sequences (FASTA or FASTQ, plain or gzip)")
    data.add_argument("--features", type=Path, metavar="DIR",
                      help="folder of merged feature files in sub-folders, as train.py --data-dir reads them")
    data.add_argument("--viral-dir", default=outputs.VIRAL_MERGED_DIR_NAME,
                      help="with --features: the sub-folder holding the viral files")
    data.add_argument("--ids", type=Path, metavar="FILE",
                      help="with --features: evaluate only the rows whose ids are listed, one per line "
                           "(e.g. the .holdout_ids.txt train.py writes beside its checkpoint)")
    parser.add_argument("--model", type=Path, action="append", required=True, metavar="CHECKPOINT",
                        help="classifier checkpoint; give it once per model")
    parser.add_argument("--outdir", type=Path, required=True, help="directory for the evaluation (created)")
    models = parser.add_argument_group("language models and prediction settings (sequence input)")
    models.add_argument("--esm-model", default=None,
                        help="protein language model for every model (default: the one recorded in each checkpoint)")
    models.add_argument("--dnabert-model", default=None,
                        help="DNA language model for every model (default: the one recorded in each checkpoint)")
    models.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    models.add_argument("--fp32", action="store_true", help="run the protein model in fp32 on CUDA")
    models.add_argument("--batch-tokens", type=cli.positive_int, default=None,
                        help="padded tokens per language-model batch (default: prediction.py's)")
    models.add_argument("--force", action="store_true", help="recompute the prediction runs in OUTDIR")
    return parser


def model_names(paths: list[Path]) -> list[str]:
    """A distinct name per checkpoint: its file stem, numbered when two are equal."""
    names: list[str] = []
    for path in paths:
        name, k = path.stem, 2
        while name in names:
            name, k = f"{path.stem}_{k}", k + 1
        names.append(name)
    return names


def write_labelled_input(viral: Path, host: Path, target: Path) -> dict[str, int]:
    """Write the viral then the host records to ``target``; returns id -> label (1 viral, 0 host)."""
    from virnucpro.fasta import write_fasta_record
    from virnucpro.files import atomic_write
    from virnucpro.fastq import read_sequences

    labels: dict[str, int] = {}
    with atomic_write(target) as out:
        for path, label in ((viral, VIRAL_LABEL), (host, HOST_LABEL)):
            for record in read_sequences(path, alphabet="dna"):
                if record.id in labels:
                    raise InputError(f"{path}: record '{record.id}' is also in {viral}; ids must be unique "
                                     "across --viral and --host")
                labels[record.id] = label
                write_fasta_record(out, record.description, record.seq)
    return labels


def sequence_tables(args: argparse.Namespace, names: list[str]) -> tuple[dict, dict, dict]:
    """Run prediction.py for each model on the labelled sequences; read its outputs back."""
    import prediction
    from virnucpro.classifier import load_checkpoint
    from virnucpro.evaluation import level_tables, read_prediction_frames

    args.outdir.mkdir(parents=True, exist_ok=True)
    labelled = args.outdir / outputs.EVALUATION_INPUT_NAME
    labels = write_labelled_input(args.viral, args.host, labelled)
    expected = {"viral": sum(labels.values()), "host": len(labels) - sum(labels.values())}
    log.info("%d viral and %d host sequences", expected["viral"], expected["host"])
    tables, runs = {}, {}
    for name, checkpoint in zip(names, args.model):
        _, meta = load_checkpoint(checkpoint)
        run_dir = args.outdir / name
        # without --esm-model/--dnabert-model, prediction.py takes the models the checkpoint records
        # when a file may choose them (virnucpro.trust): a checkpoint never picks code that runs
        argv = [str(labelled), str(meta["chunk_size"]), str(run_dir), "--model", str(checkpoint),
                "--device", args.device]
        argv += ["--esm-model", str(args.esm_model)] * bool(args.esm_model)
        argv += ["--dnabert-model", str(args.dnabert_model)] * bool(args.dnabert_model)
        argv += ["--fp32"] * args.fp32 + ["--force"] * args.force + ["-q"] * args.quiet
        if args.batch_tokens:
            argv += ["--batch-tokens", str(args.batch_tokens)]
        log.info("model %s: python prediction.py %s", name, " ".join(argv))
        code = prediction.main(argv)
        if code != cli.EXIT_OK:
            raise VirNucProError(f"{checkpoint}: prediction.py failed (exit {code}); see the message above")
        tables[name] = level_tables(read_prediction_frames(run_dir, labels))
        runs[name] = {"checkpoint": str(checkpoint), "outdir": str(run_dir), "chunk_size": meta["chunk_size"],
                      **run_models_of(run_dir)}
    return tables, runs, expected


def run_models_of(run_dir: Path) -> dict[str, str]:
    """The language models a prediction run used, from its manifest."""
    import json

    manifest = json.loads((run_dir / outputs.WORK_DIR_NAME / outputs.MANIFEST_NAME).read_text())
    return {"esm_model": manifest["esm_model"], "dnabert_model": manifest["dnabert_model"]}


def read_id_list(path: Path) -> set[str]:
    """The ids of an ``--ids`` file, one per line (blank lines ignored)."""
    from virnucpro.files import open_text

    if not path.is_file():
        raise InputError(f"{path}: --ids file not found")
    with open_text(path) as handle:
        wanted = {line.strip() for line in handle if line.strip()}
    if not wanted:
        raise InputError(f"{path}: lists no ids")
    return wanted


def feature_tables(args: argparse.Namespace, names: list[str]) -> tuple[dict, dict, None]:
    """Score the merged feature files with each model (they must share the files' feature space)."""
    import torch

    from virnucpro.training_data import load_training_data
    from virnucpro.classifier import binary_columns, load_checkpoint
    from virnucpro.errors import CheckpointError
    from virnucpro.evaluation import frame_table, level_tables
    from virnucpro.models import resolve_device
    from virnucpro.scoring import classifier_probabilities

    data = load_training_data(args.features, args.viral_dir, need_ids=args.ids is not None,
                              progress=not args.quiet)
    rows = torch.arange(data.features.shape[0])
    row_ids = data.ids if data.ids is not None else [str(i) for i in range(len(rows))]
    if args.ids is not None:
        wanted = read_id_list(args.ids)
        rows = torch.tensor([r for r, i in enumerate(row_ids) if i in wanted], dtype=torch.long)
        found = {row_ids[r] for r in rows.tolist()}
        if len(found) < len(wanted):
            raise InputError(f"{args.ids}: {len(wanted) - len(found)} of {len(wanted)} ids are not in "
                             f"{args.features} (e.g. '{sorted(wanted - found)[0]}')")
    features, labels = data.features[rows], data.labels[rows].numpy()
    selected_ids = [row_ids[r] for r in rows.tolist()]
    device = resolve_device(args.device)
    tables, runs = {}, {}
    for name, checkpoint in zip(names, args.model):
        classifier, meta = load_checkpoint(checkpoint, device)
        if (meta["dna_dim"], meta["protein_dim"]) != (data.dna_dim, data.protein_dim):
            raise CheckpointError(f"{checkpoint}: expects features {meta['dna_dim']} + {meta['protein_dim']} "
                                  f"wide, but {args.features} holds {data.dna_dim} + {data.protein_dim}; "
                                  "compare models of other feature spaces with --viral/--host")
        virus_col, others_col = binary_columns(checkpoint, meta)
        probabilities = classifier_probabilities(classifier, features, meta["num_class"], device)
        frames = frame_table(selected_ids, labels, probabilities[:, virus_col], probabilities[:, others_col])
        tables[name] = level_tables(frames) if data.ids is not None else {"frame": frames}
        runs[name] = {"checkpoint": str(checkpoint), "chunk_size": meta["chunk_size"]}
    return tables, runs, None


def evaluate(args: argparse.Namespace) -> int:
    """Score every model, then write the metrics, the agreement and the curves."""
    from virnucpro.evaluation import evaluate_models, plot_curves, write_report
    from virnucpro.classifier import binary_columns, load_checkpoint
    from virnucpro.files import require_writable_dir

    sequences = args.viral is not None or args.host is not None
    if sequences == (args.features is not None):
        raise InputError("give either --viral and --host (sequences) or --features DIR (merged feature files)")
    if sequences and (args.viral is None or args.host is None):
        raise InputError("--viral and --host are both needed")
    if args.ids is not None and not args.features:
        raise InputError("--ids selects rows of --features files")
    for checkpoint in args.model:
        if not checkpoint.is_file():
            raise InputError(f"{checkpoint}: checkpoint not found")
    require_writable_dir(args.outdir, "--outdir")
    for checkpoint in args.model:  # every checkpoint is checked before the scoring starts
        binary_columns(checkpoint, load_checkpoint(checkpoint)[1])
    names = model_names(args.model)
    tables, runs, expected = (sequence_tables if sequences else feature_tables)(args, names)
    metric_rows, agreement_rows = evaluate_models(tables, expected)
    args.outdir.mkdir(parents=True, exist_ok=True)
    info = {"input": {"viral": str(args.viral), "host": str(args.host)} if sequences else
            {"features": str(args.features), "ids": str(args.ids) if args.ids else None},
            "sequences": expected, "models": runs}
    write_report(args.outdir, metric_rows, agreement_rows, info)
    plot_curves(tables, args.outdir)
    for row in metric_rows:
        log.info("%s %-8s n=%d accuracy %.4f F1 %.4f MCC %.4f AUROC %.4f", row["model"], row["level"], row["n"],
                 row["accuracy"], row["f1"], row["mcc"], row["auroc"])
    for row in agreement_rows:
        log.info("%s vs %s %-8s agree on %.4f of %d", row["model_a"], row["model_b"], row["level"],
                 row["agreement"], row["n_common"])
    log.info("evaluation in %s", args.outdir)
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), evaluate, argv)


if __name__ == "__main__":
    sys.exit(main())
