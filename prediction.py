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
import hashlib
import heapq
import json
import logging
import math
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import seqframes
import units

log = logging.getLogger("virnucpro.predict")

PROG = "prediction.py"
WORK_DIR_NAME = ".virnucpro_work"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
RESULTS_NAME = "prediction_results.txt"
CONSENSUS_NAME = "prediction_results_highestscore.csv"
SUMMARY_NAME = "prediction_summary.tsv"
FEATURES_DIR_NAME = "features"
RESULTS_HEADER = "Sequence_ID\tPrediction\tscore1\tscore2\n"
CONSENSUS_HEADER = "Modified_ID\tIs_Virus\n"
SUMMARY_COLUMNS = ("Sequence_ID", "Length", "Chunks", "Scored_Chunks", "Viral_Chunks",
                   "Viral_Fraction", "Max_Virus_Score", "Mean_Virus_Score", "Prediction")
DEFAULT_SHARD_CHUNKS = 10000
MLP_BATCH_ROWS = 4096
VIRUS_CLASS = 1
FASTA_SUFFIXES = (".fa", ".fasta", ".fas", ".fna", ".ffn", ".fsa", ".seq", ".txt")
HASH_BLOCK = 1 << 20


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def build_parser() -> units.CliArgumentParser:
    parser = units.CliArgumentParser(
        prog=PROG,
        description="Identify viral DNA among short sequences (VirNucPro with FastESM2_650).",
        epilog="Example: python prediction.py reads.fasta 300 results/  "
               "(uses 300_model_fastesm650.pth; train one with train.py)",
    )
    parser.add_argument("input", type=Path, help="DNA FASTA file to score, plain or gzip-compressed")
    parser.add_argument("length", type=units.positive_int, metavar="LENGTH",
                        help="chunk length in bp (300 or 500; must match the model's chunk size)")
    parser.add_argument("outdir", type=Path, metavar="OUTDIR", help="directory for the results (created)")
    parser.add_argument("--model", type=Path, default=None,
                        help="classifier checkpoint (default: {LENGTH}_model_fastesm650.pth in the "
                             "current directory, then next to this script)")
    units.add_model_arguments(parser)
    parser.add_argument("--shard-size", type=units.positive_int, default=DEFAULT_SHARD_CHUNKS,
                        help="chunks per shard: the unit of streaming and of resuming after a crash")
    parser.add_argument("--keep-features", action="store_true",
                        help="keep the merged feature files in OUTDIR/features/")
    parser.add_argument("--force", action="store_true",
                        help="discard earlier results of this program in OUTDIR and start over")
    return parser


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def input_stem(path: Path) -> str:
    """The input's name without .gz and a FASTA suffix: reads.fa.gz -> reads."""
    name = path.name
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in FASTA_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def format_score(value: np.float32) -> str:
    """Scores are written as the original did: ``str`` of a numpy float32."""
    return str(np.float32(value))


def find_checkpoint(model: Path | None, length: int) -> Path:
    if model is not None:
        return model
    name = f"{length}_model_fastesm650.pth"
    for candidate in (Path.cwd() / name, Path(__file__).resolve().parent / name):
        if candidate.is_file():
            return candidate
    raise units.CheckpointError(
        f"no classifier checkpoint {name} in the current directory or next to {PROG}; "
        f"pass --model PATH, or train one: python train.py --chunk-size {length}")


def prepare_outdir(outdir: Path) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise units.InputError(f"{outdir}: OUTDIR exists and is not a directory")
    if outdir.suffix == ".pth" and not outdir.exists():
        raise units.InputError(f"{outdir}: the third argument is OUTDIR (a directory); pass a "
                               "checkpoint with --model")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        probe = outdir / f".write_test_{__import__('os').getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise units.InputError(f"{outdir}: OUTDIR is not writable ({exc.strerror or exc})") from None


# ---------------------------------------------------------------------------
# Shards: what one unit of work holds
# ---------------------------------------------------------------------------


@dataclass
class SequenceInfo:
    seq_id: str
    length: int
    chunk_ids: list[str]


@dataclass
class Shard:
    index: int
    sequences: list[SequenceInfo] = field(default_factory=list)
    chunks: list[tuple[str, str]] = field(default_factory=list)  # (chunk id, chunk as in the input)
    frame_ids: list[str] = field(default_factory=list)
    nucleotides: list[str] = field(default_factory=list)
    proteins: list[str] = field(default_factory=list)

    @property
    def chunk_count(self) -> int:
        return len(self.chunks)


def iter_shards(input_path: Path, chunk_size: int, shard_chunks: int) -> Iterator[tuple[int, list[units.FastaRecord]]]:
    """Group input records into shards of about ``shard_chunks`` chunks (whole records only)."""
    batch: list[units.FastaRecord] = []
    chunks = 0
    index = 0
    for record in units.read_fasta(input_path, alphabet="dna"):
        batch.append(record)
        chunks += max(1, math.ceil(len(record.seq) / chunk_size))
        if chunks >= shard_chunks:
            yield index, batch
            index += 1
            batch, chunks = [], 0
    if batch:
        yield index, batch


def preprocess_shard(index: int, records: list[units.FastaRecord], chunk_size: int) -> Shard:
    """Chunk, translate and select frames for the records of one shard (CPU only)."""
    shard = Shard(index)
    for record in records:
        chunks = units.chunk_sequence(record.seq, chunk_size)
        chunk_ids = [f"{record.id}_chunk_{k}" for k in range(1, len(chunks) + 1)]
        shard.sequences.append(SequenceInfo(record.id, len(record.seq), chunk_ids))
        shard.chunks.extend(zip(chunk_ids, chunks))
    upper_chunks = [(chunk_id, chunk.upper()) for chunk_id, chunk in shard.chunks]
    for frame_id, nucleotide, protein in seqframes.select_frames(upper_chunks):
        shard.frame_ids.append(frame_id)
        shard.nucleotides.append(nucleotide)
        shard.proteins.append(protein)
    return shard


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


@dataclass
class Scorer:
    """The three models of a run, loaded once."""

    classifier: torch.nn.Module
    meta: dict
    dna: units.LoadedModel
    protein: units.LoadedModel
    device: torch.device
    batch_tokens: int
    progress: bool

    def features(self, shard: Shard) -> torch.Tensor:
        dna = units.embed_dna(shard.nucleotides, self.dna, batch_tokens=self.batch_tokens, progress=self.progress)
        protein = units.embed_proteins(shard.proteins, self.protein, batch_tokens=self.batch_tokens,
                                       ids=shard.frame_ids, progress=self.progress)
        return torch.cat((dna, protein), dim=1)

    def probabilities(self, features: torch.Tensor) -> np.ndarray:
        """Softmax class probabilities, float32 (N, num_class)."""
        out = np.empty((features.shape[0], self.meta["num_class"]), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, features.shape[0], MLP_BATCH_ROWS):
                batch = features[start:start + MLP_BATCH_ROWS].to(self.device)
                out[start:start + batch.shape[0]] = F.softmax(self.classifier(batch), dim=1).cpu().numpy()
        return out


def load_classifier(checkpoint_path: Path, length: int) -> tuple[torch.nn.Module, dict]:
    """The checkpoint, refused before any heavy work when it is foreign, legacy or for another LENGTH."""
    classifier, meta = units.load_checkpoint(checkpoint_path, "cpu")
    if meta["chunk_size"] != length:
        raise units.CheckpointError(
            f"{checkpoint_path}: model was trained on {meta['chunk_size']}-bp chunks but LENGTH is "
            f"{length}; use the {length}_model_fastesm650.pth model or LENGTH {meta['chunk_size']}")
    return classifier, meta


def load_scorer(args: argparse.Namespace, checkpoint_path: Path, classifier: torch.nn.Module, meta: dict,
                device: torch.device) -> Scorer:
    """Load the two language models and check that their widths fit the classifier."""
    dna = units.load_dnabert_model(args.dnabert_model, device)
    protein = units.load_protein_model(args.esm_model, device, fp16=not args.fp32)
    if (dna.hidden_size, protein.hidden_size) != (meta["dna_dim"], meta["protein_dim"]):
        raise units.CheckpointError(
            f"{checkpoint_path}: model expects features {meta['dna_dim']} (DNA, {meta['dna_model']}) + "
            f"{meta['protein_dim']} (protein, {meta['protein_model']}) wide, but the language models "
            f"give {dna.hidden_size} + {protein.hidden_size}; use the language models it was trained with")
    classifier.to(device)
    return Scorer(classifier, meta, dna, protein, device, args.batch_tokens, not args.quiet)


# ---------------------------------------------------------------------------
# Per-shard outputs
# ---------------------------------------------------------------------------

SHARD_PARTS = ("chunked.fa", "nucleotide.fa", "protein.faa", "results.tsv", "consensus.tsv", "summary.tsv")


def shard_path(work: Path, index: int, part: str) -> Path:
    return work / f"shard_{index:06d}.{part}"


def write_shard(work: Path, shard: Shard, probabilities: np.ndarray, label_map: dict[int, str],
                features: torch.Tensor | None, features_dir: Path | None, meta: dict) -> None:
    """Write every file of one shard atomically, then its ``done`` marker."""
    with units.atomic_write(shard_path(work, shard.index, "chunked.fa")) as handle:
        for chunk_id, chunk in shard.chunks:
            units.write_fasta_record(handle, chunk_id, chunk)
    with units.atomic_write(shard_path(work, shard.index, "nucleotide.fa")) as handle:
        handle.writelines(f">{i}\n{s}\n" for i, s in zip(shard.frame_ids, shard.nucleotides))
    with units.atomic_write(shard_path(work, shard.index, "protein.faa")) as handle:
        handle.writelines(f">{i}\n{s}\n" for i, s in zip(shard.frame_ids, shard.proteins))

    predicted = probabilities.argmax(axis=1) if len(probabilities) else np.empty(0, dtype=int)
    with units.atomic_write(shard_path(work, shard.index, "results.tsv")) as handle:
        for frame_id, label, row in zip(shard.frame_ids, predicted, probabilities):
            scores = "\t".join(format_score(p) for p in row)
            handle.write(f"{frame_id}\t{label_map[int(label)]}\t{scores}\n")

    best = chunk_best_scores(shard.frame_ids, probabilities)
    with units.atomic_write(shard_path(work, shard.index, "consensus.tsv")) as handle:
        handle.writelines(consensus_lines(best))
    with units.atomic_write(shard_path(work, shard.index, "summary.tsv")) as handle:
        for info in shard.sequences:
            handle.write("\t".join(summary_row(info, best)) + "\n")
    if features_dir is not None and features is not None:
        units.atomic_torch_save({"ids": list(shard.frame_ids), "data": features,
                                 "dna_dim": meta["dna_dim"], "protein_dim": meta["protein_dim"]},
                                features_dir / f"shard_{shard.index:06d}_merged.pt")
    with units.atomic_write(shard_path(work, shard.index, "done")) as handle:
        json.dump({"sequences": len(shard.sequences), "chunks": shard.chunk_count,
                   "frames": len(shard.frame_ids)}, handle)


def chunk_best_scores(frame_ids: Sequence[str], probabilities: np.ndarray) -> dict[str, list[np.float32]]:
    """Per chunk (frame id minus its 2-character frame tag): [max score1, max score2]."""
    best: dict[str, list[np.float32]] = {}
    for frame_id, row in zip(frame_ids, probabilities):
        chunk_id = frame_id[:-2]
        current = best.get(chunk_id)
        if current is None:
            best[chunk_id] = [row[0], row[VIRUS_CLASS]]
        else:
            current[0] = max(current[0], row[0])
            current[1] = max(current[1], row[VIRUS_CLASS])
    return best


def consensus_lines(best: dict[str, list[np.float32]]) -> list[str]:
    """prediction_results_highestscore.csv rows, sorted by chunk id: Is_Virus = max(score2) >= max(score1)."""
    return [f"{chunk_id}\t{bool(best[chunk_id][1] >= best[chunk_id][0])}\n" for chunk_id in sorted(best)]


def summary_row(info: SequenceInfo, best: dict[str, list[np.float32]]) -> list[str]:
    """One prediction_summary.tsv row for an input sequence."""
    scored = [best[c] for c in info.chunk_ids if c in best]
    viral = sum(1 for others, virus in scored if virus >= others)
    if scored:
        fraction = viral / len(scored)
        max_virus = format_score(max(virus for _, virus in scored))
        mean_virus = f"{float(np.mean([float(virus) for _, virus in scored])):.6f}"
        call = "virus" if fraction >= 0.5 else "others"
        fraction_text = f"{fraction:.4f}"
    else:
        fraction_text, max_virus, mean_virus, call = "NA", "NA", "NA", "no_call"
    return [info.seq_id, str(info.length), str(len(info.chunk_ids)), str(len(scored)), str(viral),
            fraction_text, max_virus, mean_virus, call]


# ---------------------------------------------------------------------------
# Run state: manifest, resume, finalisation
# ---------------------------------------------------------------------------


def run_settings(args: argparse.Namespace, checkpoint: Path, device: torch.device) -> dict:
    """Everything that determines the output bytes; a rerun must match it to resume."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "input_sha256": file_sha256(args.input),
        "chunk_size": args.length,
        "checkpoint_sha256": file_sha256(checkpoint),
        "esm_model": str(args.esm_model),
        "dnabert_model": str(args.dnabert_model),
        "device_type": device.type,
        "protein_fp16": device.type == "cuda" and not args.fp32,
        "batch_tokens": args.batch_tokens,
        "shard_size": args.shard_size,
        "keep_features": bool(args.keep_features),
    }


def final_outputs(outdir: Path, stem: str, length: int) -> list[Path]:
    return [outdir / f"{stem}_chunked{length}.fa", outdir / f"{stem}_identified_nucleotide.fa",
            outdir / f"{stem}_identified_protein.faa", outdir / RESULTS_NAME, outdir / CONSENSUS_NAME,
            outdir / SUMMARY_NAME]


def remove_own_files(outdir: Path, stem: str, length: int) -> None:
    """--force: delete only what this program writes in OUTDIR."""
    shutil.rmtree(outdir / WORK_DIR_NAME, ignore_errors=True)
    for path in final_outputs(outdir, stem, length):
        path.unlink(missing_ok=True)
    features = outdir / FEATURES_DIR_NAME
    if features.is_dir():
        for path in features.glob("shard_*_merged.pt"):
            path.unlink()
        try:
            features.rmdir()
        except OSError:
            pass  # the user keeps other files there


def open_run(outdir: Path, settings: dict, force: bool, stem: str, length: int) -> tuple[Path, bool]:
    """Create or resume the work directory; returns (work_dir, already_finished)."""
    work = outdir / WORK_DIR_NAME
    manifest_path = work / MANIFEST_NAME
    if force:
        remove_own_files(outdir, stem, length)
    elif manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            previous = {}
        old = {k: v for k, v in previous.items() if k != "finished"}
        if old != settings:
            changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise units.VirNucProError(
                f"{outdir}: holds a run with different {', '.join(changed)}; rerun with --force to "
                "start over, or choose another OUTDIR")
        finished = bool(previous.get("finished")) and all(p.is_file() for p in final_outputs(outdir, stem, length))
        if not finished:
            log.info("resuming the run in %s", outdir)
        return work, finished
    elif any(p.exists() for p in final_outputs(outdir, stem, length)):
        raise units.VirNucProError(f"{outdir}: already holds results not made by this run "
                                   "(no run manifest); use --force to overwrite them or choose another OUTDIR")
    work.mkdir(parents=True, exist_ok=True)
    for stale in work.glob(".*.tmp"):
        stale.unlink()
    with units.atomic_write(manifest_path) as handle:
        json.dump(settings, handle, indent=1, sort_keys=True)
    return work, False


def concatenate(parts: list[Path], target: Path, header: str = "") -> None:
    with units.atomic_write(target, "wb") as out:
        out.write(header.encode())
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, HASH_BLOCK)


def merge_sorted(parts: list[Path], target: Path, header: str) -> None:
    """Merge per-shard sorted consensus files into one file sorted by chunk id."""
    handles: list[IO[str]] = [open(p, encoding=units.TEXT_ENCODING, errors=units.TEXT_ERRORS, newline="\n")
                              for p in parts]
    try:
        with units.atomic_write(target) as out:
            out.write(header)
            out.writelines(heapq.merge(*handles, key=lambda line: line.split("\t", 1)[0]))
    finally:
        for handle in handles:
            handle.close()


def finalise(outdir: Path, work: Path, shard_count: int, stem: str, length: int) -> None:
    parts = {part: [shard_path(work, i, part) for i in range(shard_count)] for part in SHARD_PARTS}
    chunked, nucleotide, protein, results, consensus, summary = final_outputs(outdir, stem, length)
    concatenate(parts["chunked.fa"], chunked)
    concatenate(parts["nucleotide.fa"], nucleotide)
    concatenate(parts["protein.faa"], protein)
    concatenate(parts["results.tsv"], results, RESULTS_HEADER)
    merge_sorted(parts["consensus.tsv"], consensus, CONSENSUS_HEADER)
    concatenate(parts["summary.tsv"], summary, "\t".join(SUMMARY_COLUMNS) + "\n")
    manifest_path = work / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["finished"] = True
    with units.atomic_write(manifest_path) as handle:
        json.dump(manifest, handle, indent=1, sort_keys=True)
    for path in work.glob("shard_*"):
        path.unlink()


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def predict(args: argparse.Namespace) -> int:
    units.check_input_file(args.input)
    prepare_outdir(args.outdir)
    checkpoint = find_checkpoint(args.model, args.length)
    classifier, meta = load_classifier(checkpoint, args.length)
    device = units.resolve_device(args.device)
    # A first pass validates the whole input, so bad records are reported before models load.
    for _ in units.read_fasta(args.input, alphabet="dna"):
        pass
    stem = input_stem(args.input)
    settings = run_settings(args, checkpoint, device)
    work, finished = open_run(args.outdir, settings, args.force, stem, args.length)
    if finished:
        log.info("%s is complete already (use --force to recompute)", args.outdir)
        return units.EXIT_OK
    scorer = load_scorer(args, checkpoint, classifier, meta, device)
    features_dir = args.outdir / FEATURES_DIR_NAME if args.keep_features else None
    label_map = scorer.meta["label_map"]
    shard_count = 0
    with ThreadPoolExecutor(max_workers=1) as prefetch:
        pending = None
        for index, records in iter_shards(args.input, args.length, args.shard_size):
            shard_count = index + 1
            if shard_path(work, index, "done").is_file():
                continue
            next_shard = prefetch.submit(preprocess_shard, index, records, args.length)
            if pending is not None:
                score_and_write(pending.result(), scorer, work, label_map, features_dir)
            pending = next_shard
        if pending is not None:
            score_and_write(pending.result(), scorer, work, label_map, features_dir)
    finalise(args.outdir, work, shard_count, stem, args.length)
    log.info("results in %s", args.outdir)
    return units.EXIT_OK


def score_and_write(shard: Shard, scorer: Scorer, work: Path, label_map: dict[int, str],
                    features_dir: Path | None) -> None:
    if shard.frame_ids:
        features = scorer.features(shard)
        probabilities = scorer.probabilities(features)
    else:
        features = torch.empty((0, scorer.meta["input_dim"]))
        probabilities = np.empty((0, scorer.meta["num_class"]), dtype=np.float32)
    write_shard(work, shard, probabilities, label_map, features, features_dir, scorer.meta)
    log.info("shard %d: %d sequences, %d chunks, %d frames scored", shard.index, len(shard.sequences),
             shard.chunk_count, len(shard.frame_ids))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    units.setup_logging(args.quiet, args.verbose)
    return units.run_cli(PROG, lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
