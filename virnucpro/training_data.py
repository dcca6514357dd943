"""The training set: merged feature files found, read, checked against each other, split.

Rows of the folder named like :data:`virnucpro.outputs.VIRAL_MERGED_DIR_NAME` are
viral (label 1), rows of every other sub-folder host (label 0).  Every file must
have the same width and record the same models; the rows of all files are copied
into one float32 tensor.  Files that say their DNA revision is unrecorded (made from DNABERT-S
features of the original pipeline) may be used with files that record one: one warning, and
the checkpoint then records no DNA model revision.  A file whose checksum does not match its
content is refused.  The hold-out split keeps every frame and chunk of one
source sequence on one side (``sequence``) or is the original per-row split
(``record``).  Duplicated data (files with identical content, row ids in more than
one file) and a class imbalance beyond 1:10 are reported with a WARNING, not refused.
"""
from __future__ import annotations

import logging
import os
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .defaults import OTHERS_CLASS, VIRUS_CLASS
from .errors import FeatureFileError, InputError
from .features import MERGED_NAME_KEYS, MODEL_KEYS, UNRECORDED_REVISION, MergedFile, read_merged_file, require_finite
from .files import HASH_BLOCK, file_sha256, require_dir
from .ids import source_sequence_id
from .outputs import VIRAL_MERGED_DIR_NAME
from .provenance import REVISION_KEYS, short

log = logging.getLogger("virnucpro.train")

DEFAULT_VIRAL_DIR = VIRAL_MERGED_DIR_NAME
LEGACY_DNA_DIM = 768  # DNABERT-S; used only for merged files that do not record their widths
VIRAL_LABEL, HOST_LABEL = VIRUS_CLASS, OTHERS_CLASS  # the labels of merged files: defaults.LABEL_MAP's classes
#: A WARNING when the smaller class has fewer rows than this share of the larger one (1:10).
IMBALANCE_RATIO = 0.1
#: Pairs of files named in the duplicate-rows WARNING.
SHOWN_PAIRS = 3


@dataclass
class TrainingData:
    """All rows of all merged files in one tensor, with what is known about them."""

    features: torch.Tensor          # float32 (N, D)
    labels: torch.Tensor            # int64 (N,)
    groups: np.ndarray              # int64 (N,): index of the source sequence of each row
    files: list[Path]
    dna_dim: int
    protein_dim: int
    dna_model: str | None = None
    protein_model: str | None = None
    dna_model_revision: str | None = None
    protein_model_revision: str | None = None
    ids: list[str] | None = None    # the row ids (None when a file records none)

    @property
    def input_dim(self) -> int:
        return int(self.features.shape[1])


# ---------------------------------------------------------------------------
# Finding and reading the files
# ---------------------------------------------------------------------------


def find_merged_files(data_dir: Path, viral_dir: str) -> list[tuple[Path, int]]:
    """``(file, label)`` for every ``*.pt`` in the sub-folders: viral folder first, then the others, sorted."""
    require_dir(data_dir, hint=" (make it with features_extract.py, or point --data-dir at the folder "
                               "holding the *_merged sub-folders)")
    viral: list[Path] = []
    host: list[Path] = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.glob("*.pt") if p.is_file() and not p.name.startswith("."))
        (viral if folder.name == viral_dir else host).extend(files)
    loose = sorted(p.name for p in data_dir.glob("*.pt"))
    if loose:
        log.warning("%s: %d .pt file(s) directly in the data directory are ignored (only sub-folders are "
                    "read): %s", data_dir, len(loose), ", ".join(loose[:3]) + (" ..." if len(loose) > 3 else ""))
    if not viral and not host:
        raise FeatureFileError(f"{data_dir}: no merged feature files (*.pt) in its sub-folders; "
                               "make them with features_extract.py")
    if not viral:
        raise FeatureFileError(f"{data_dir}: no viral data: no *.pt files in a '{viral_dir}' sub-folder "
                               "(see --viral-dir)")
    if not host:
        raise FeatureFileError(f"{data_dir}: no host data: every *.pt file is in the viral folder "
                               f"'{viral_dir}'; host files go in other sub-folders")
    return [(p, VIRAL_LABEL) for p in viral] + [(p, HOST_LABEL) for p in host]


def check_file_label(merged: MergedFile, expected: int, viral_dir: str) -> None:
    """The labels a file records must be the label of its folder."""
    if merged.labels is None:
        return
    found = sorted(set(merged.labels))
    if found != [expected]:
        where = f"inside the viral folder '{viral_dir}'" if expected == VIRAL_LABEL else \
            f"outside the viral folder '{viral_dir}'"
        raise FeatureFileError(f"{merged.path}: its 'labels' {found} disagree with its folder ({where}, so "
                               f"label {expected}); move the file or check --viral-dir")


@dataclass
class FileAgreement:
    """What every merged file of one training set must share: width, part widths, model names."""

    width: int | None = None
    width_file: Path | None = None
    dims: tuple[int, int] | None = None
    dims_file: Path | None = None
    names: dict[str, tuple[str, Path]] = field(default_factory=dict)
    #: revision key -> (files that say their revision is unrecorded, the first of them)
    unrecorded: dict[str, tuple[int, Path]] = field(default_factory=dict)

    def check(self, merged: MergedFile) -> None:
        """FeatureFileError when ``merged`` disagrees with the files checked before it."""
        path = merged.path
        if self.width is None:
            self.width, self.width_file = merged.width, path
        elif merged.width != self.width:
            raise FeatureFileError(
                f"{path}: feature width {merged.width} differs from {self.width} in {self.width_file}; all "
                "merged files must be made with the same DNA and protein models")
        if merged.dna_dim is not None and merged.protein_dim is not None:
            file_dims = (merged.dna_dim, merged.protein_dim)
            if self.dims is None:
                self.dims, self.dims_file = file_dims, path
            elif file_dims != self.dims:
                raise FeatureFileError(f"{path}: dna_dim/protein_dim {file_dims} differ from {self.dims} in "
                                       f"{self.dims_file}")
        for key in MERGED_NAME_KEYS:
            value = getattr(merged, key)
            if value is None:
                continue
            if value == UNRECORDED_REVISION and key in REVISION_KEYS.values():  # see note_unrecorded
                count, first = self.unrecorded.get(key, (0, path))
                self.unrecorded[key] = (count + 1, first)
                continue
            if key in self.names and self.names[key][0] != value:
                raise FeatureFileError(f"{path}: made with {key} '{value}' but {self.names[key][1]} with "
                                       f"'{self.names[key][0]}'; features of different models cannot be mixed")
            self.names.setdefault(key, (value, path))

    def part_widths(self) -> tuple[int, int]:
        """(dna_dim, protein_dim) as recorded, else DNABERT-S 768 + the rest (old files)."""
        if self.dims is not None:
            return self.dims
        assert self.width is not None
        if self.width <= LEGACY_DNA_DIM:
            raise FeatureFileError(f"{self.width_file}: feature width {self.width} is too small for DNABERT-S "
                                   f"({LEGACY_DNA_DIM}) + protein features, and the files do not "
                                   "record dna_dim/protein_dim")
        log.warning("the merged files do not record dna_dim/protein_dim; assuming DNABERT-S %d + protein %d",
                    LEGACY_DNA_DIM, self.width - LEGACY_DNA_DIM)
        return LEGACY_DNA_DIM, self.width - LEGACY_DNA_DIM

    def model_name(self, key: str) -> str | None:
        """What the files that record ``key`` agree on; None when none does, or some say the revision is
        unrecorded."""
        if key in self.unrecorded:
            return None  # a checkpoint records no revision it cannot vouch for
        return self.names[key][0] if key in self.names else None

    def note_unrecorded(self) -> None:
        """One line for each revision that some files say is unrecorded (DNA features of the original
        pipeline): a warning when other files record one (they are used together), else information."""
        for kind, key in REVISION_KEYS.items():
            if key not in self.unrecorded:
                continue
            count, first = self.unrecorded[key]
            part, model = ("DNA" if kind == "dna" else kind), self.model_name(MODEL_KEYS[kind]) or "its model"
            if key in self.names:
                log.warning("%d merged file(s) (e.g. %s) hold %s features of %s at an unrecorded revision (the "
                            "original pipeline's), the others at %s (%s): used together as the same weights; the "
                            "checkpoint records no %s model revision", count, first, part, model,
                            short(self.names[key][0]), self.names[key][1], part)
            else:
                log.info("the %s features are of %s at an unrecorded revision (the original pipeline's); the "
                         "checkpoint records no %s model revision", part, model, part)


def read_files(files: list[tuple[Path, int]], viral_dir: str, need_ids: bool,
               progress: bool) -> tuple[list[tuple[MergedFile, int]], FileAgreement]:
    """Read and check every file; returns the non-empty ones with their labels."""
    agreement = FileAgreement()
    blocks: list[tuple[MergedFile, int]] = []
    for path, label in tqdm(files, desc="reading features", unit="file", disable=not progress):
        merged = read_merged_file(path, mmap=True)
        if merged.ids is None and need_ids:
            raise FeatureFileError(f"{path}: no 'ids', so rows cannot be grouped by source "
                                   "sequence; use --split-by record")
        check_file_label(merged, label, viral_dir)
        if merged.rows == 0:
            log.warning("%s: holds no rows; skipped", path)
            continue
        agreement.check(merged)
        blocks.append((merged, label))
    return blocks, agreement


# ---------------------------------------------------------------------------
# Putting the rows together
# ---------------------------------------------------------------------------


def check_both_classes(blocks: list[tuple[MergedFile, int]], data_dir: Path, viral_dir: str) -> None:
    """FeatureFileError unless both viral and host rows remain."""
    if not blocks:
        raise FeatureFileError(f"{data_dir}: the merged feature files hold no rows")
    labels_present = {label for _, label in blocks}
    if VIRAL_LABEL not in labels_present:
        raise FeatureFileError(f"{data_dir}: no viral rows (the files in '{viral_dir}' are empty)")
    if HOST_LABEL not in labels_present:
        raise FeatureFileError(f"{data_dir}: no host rows (the host files are empty)")


def warn_imbalance(n_viral: int, n_host: int) -> None:
    """A WARNING with the class counts when the smaller class is below :data:`IMBALANCE_RATIO` of the larger."""
    small, large = sorted((n_viral, n_host))
    if large and small < IMBALANCE_RATIO * large:
        log.warning("class imbalance: %d viral vs %d host rows (1:%.0f, beyond 1:%.0f); the classifier may learn "
                    "to call almost everything %s: balance the data or check the folders",
                    n_viral, n_host, large / max(small, 1), 1 / IMBALANCE_RATIO,
                    "host" if n_host > n_viral else "viral")


def _identical_groups(paths: Sequence[Path]) -> list[list[Path]]:
    """Groups of files with the same bytes: same size, then same first block, then the same SHA-256."""
    def grouped(candidates: Iterable[Path], key: Callable[[Path], object]) -> list[list[Path]]:
        groups: dict[object, list[Path]] = defaultdict(list)
        for path in candidates:
            groups[key(path)].append(path)
        return [group for group in groups.values() if len(group) > 1]

    def first_block(path: Path) -> bytes:
        with open(path, "rb") as handle:
            return handle.read(HASH_BLOCK)

    found = []
    for same_size in grouped(paths, lambda path: os.stat(path).st_size):
        for same_start in grouped(same_size, first_block):
            found.extend(grouped(same_start, file_sha256))
    return found


def warn_duplicates(blocks: Sequence[tuple[MergedFile, int]], viral_dir: str) -> None:
    """WARNINGs naming merged files with identical content, and files that share row ids (one line each)."""
    label_of = {merged.path: label for merged, label in blocks}
    copies: set[Path] = set()
    for group in _identical_groups([merged.path for merged, _ in blocks]):
        copies.update(group[1:])
        both = f" (inside '{viral_dir}' and outside it)" if len({label_of[p] for p in group}) > 1 else ""
        log.warning("identical merged files%s: %s; their rows count %d times", both,
                    ", ".join(str(p) for p in group), len(group))
    owner: dict[str, int] = {}
    shared: dict[tuple[int, int], int] = defaultdict(int)
    for index, (merged, _) in enumerate(blocks):
        if merged.ids is None or merged.path in copies:
            continue
        for row_id in merged.ids:
            first = owner.setdefault(row_id, index)
            if first != index:
                shared[first, index] += 1
    if shared:
        pairs = sorted(shared.items(), key=lambda item: (-item[1], item[0]))
        shown = "; ".join(f"{blocks[a][0].path} and {blocks[b][0].path} ({n})" for (a, b), n in pairs[:SHOWN_PAIRS])
        more = f"; and {len(pairs) - SHOWN_PAIRS} more pair(s)" if len(pairs) > SHOWN_PAIRS else ""
        log.warning("%d row id(s) appear in more than one merged file, so those rows count more than once: %s%s",
                    sum(shared.values()), shown, more)


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def stack_rows(blocks: list[tuple[MergedFile, int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All rows in one float32 tensor and their labels; rows with NaN or inf are refused.

    InputError, before anything is copied, when the rows do not fit in this machine's memory.
    """
    total = sum(merged.rows for merged, _ in blocks)
    size = 4 * total * width
    memory = _physical_memory()
    too_big = InputError(f"the {total} rows x {width} features of the merged files need {size / 2**30:.1f} GiB "
                         f"of memory{'' if memory is None else f', this machine has {memory / 2**30:.1f} GiB'}; "
                         "train on fewer files")
    if memory is not None and size > memory:
        raise too_big
    try:
        features = torch.empty(total, width, dtype=torch.float32)
    except (RuntimeError, MemoryError):
        raise too_big from None
    labels = torch.empty(total, dtype=torch.int64)
    start = 0
    for merged, label in blocks:
        stop = start + merged.rows
        features[start:stop].copy_(merged.data)
        require_finite(merged.path, features[start:stop])
        labels[start:stop] = label
        start = stop
    return features, labels


def row_groups(blocks: Iterable[MergedFile]) -> np.ndarray:
    """The source sequence of each row as a number counting up in order of first appearance.

    Rows of a file without ids are each their own group (only used with ``--split-by record``).
    """
    group_index: dict[str, int] = {}
    groups: list[np.ndarray] = []
    taken = 0
    for merged in blocks:
        if merged.ids is not None:
            keys: Iterable[int] = [group_index.setdefault(source_sequence_id(i), len(group_index))
                                   for i in merged.ids]
        else:
            start = len(group_index) + taken
            keys = range(start, start + merged.rows)
        groups.append(np.fromiter(keys, dtype=np.int64, count=merged.rows))
        taken += merged.rows
    return np.concatenate(groups)


def load_training_data(data_dir: Path, viral_dir: str = DEFAULT_VIRAL_DIR, *, need_ids: bool = True,
                       progress: bool = True, files: list[tuple[Path, int]] | None = None,
                       check_width: Callable[[int], None] | None = None) -> TrainingData:
    """Read and validate every merged file into one float32 tensor (rows of all files, in order).

    ``files``: :func:`find_merged_files`'s answer, when the caller has it; ``check_width`` is
    called with the feature width before the rows are copied (to refuse a model early).
    """
    if files is None:
        files = find_merged_files(data_dir, viral_dir)
    blocks, agreement = read_files(files, viral_dir, need_ids, progress)
    check_both_classes(blocks, data_dir, viral_dir)
    agreement.note_unrecorded()
    dna_dim, protein_dim = agreement.part_widths()
    assert agreement.width is not None
    if check_width is not None:
        check_width(agreement.width)
    warn_duplicates(blocks, viral_dir)
    features, labels = stack_rows(blocks, agreement.width)
    with_ids = all(m.ids is not None for m, _ in blocks)
    return TrainingData(features=features, labels=labels, groups=row_groups(m for m, _ in blocks),
                        files=[m.path for m, _ in blocks], dna_dim=dna_dim, protein_dim=protein_dim,
                        ids=[i for m, _ in blocks for i in m.ids] if with_ids else None,  # type: ignore[union-attr]
                        **{key: agreement.model_name(key) for key in MERGED_NAME_KEYS})


# ---------------------------------------------------------------------------
# Hold-out split
# ---------------------------------------------------------------------------


def split_records(n_rows: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The original split: shuffle row indices with ``random`` seeded by ``seed``, hold out the first share."""
    indices = list(range(n_rows))
    random.Random(seed).shuffle(indices)
    n_test = int(n_rows * test_fraction)
    test, train = np.array(indices[:n_test], dtype=np.int64), np.array(indices[n_test:], dtype=np.int64)
    return np.sort(train), np.sort(test)


def split_groups(groups: Sequence[Hashable] | np.ndarray, labels: Sequence[int] | np.ndarray,
                 test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole groups (source sequences), about ``test_fraction`` of the rows of each class.

    Groups of each class are shuffled (seeded) and taken until the class's share of rows
    is reached; a class keeps at least one group in training.  Returns sorted
    ``(train_rows, test_rows)``; no group has rows on both sides.
    """
    labels = np.asarray(labels)
    if len(labels) != len(groups):
        raise ValueError("groups and labels must have the same length")
    keys, first, inverse = np.unique(np.asarray(groups), return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse, minlength=len(keys))
    group_label = labels[first]
    rng = random.Random(seed)
    test_groups: list[int] = []
    for label in sorted(set(group_label.tolist())):
        members = np.flatnonzero(group_label == label).tolist()
        target = max(1, int(sizes[members].sum() * test_fraction))
        rng.shuffle(members)
        taken = 0
        for count, group in enumerate(members):
            if taken >= target or count == len(members) - 1:
                break  # enough rows, or only one group of this class left: it stays in training
            test_groups.append(group)
            taken += int(sizes[group])
    is_test = np.zeros(len(keys), dtype=bool)
    is_test[test_groups] = True
    row_is_test = is_test[inverse]
    return np.flatnonzero(~row_is_test), np.flatnonzero(row_is_test)


def make_split(data: TrainingData, split_by: str, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_rows, test_rows) split ``by`` sequence or record; InputError when a side is too small."""
    n_rows = int(data.labels.shape[0])
    if split_by == "record":
        train, test = split_records(n_rows, test_fraction, seed)
    else:
        train, test = split_groups(data.groups, data.labels.numpy(), test_fraction, seed)
    if len(test) == 0:
        raise InputError(f"the hold-out is empty ({n_rows} rows, --test-fraction {test_fraction}, "
                         f"--split-by {split_by}); add data or raise --test-fraction")
    if len(train) < 2:
        raise InputError(f"only {len(train)} training row(s) left after the hold-out; add data or "
                         "lower --test-fraction")
    return train, test
