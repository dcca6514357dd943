"""Fetching the published VirNucPro models (300_model.pth, 500_model.pth) and converting them.

The files come from the original repository at a pinned commit and are checked against
their git blob ids (sha1 of ``b"blob <size>\\0" + content``) before anything reads them;
a file that does not match is removed and refused (:class:`DataSourceError`, exit 3).
Downloads go to ``<name>.part`` beside the target, resume with an HTTP Range request,
and are renamed into place only once verified.  Each verified file is then converted
with the safe converter (:mod:`virnucpro.legacy`) into ``{chunk}_model_esm2_3b.pth``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .defaults import ESM2_3B_MODEL
from .errors import DataSourceError, InputError
from .files import git_blob_id

log = logging.getLogger("virnucpro.original_models")

#: The original repository's commit the files are fetched from (pinned: the blob ids belong to it).
ORIGINAL_COMMIT = "0f93f2755a7ea1acd3ff1bcf182892f960ef3326"  # 0f93f27: the full id, so the raw-file host needs no short-id lookup
#: Where one file of that commit is served (raw-file form of a pinned commit).
ORIGINAL_URL_TEMPLATE = "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/{commit}/{name}"
PART_SUFFIX = ".part"
BLOCK_SIZE = 1 << 16


@dataclass(frozen=True)
class OriginalModel:
    """One published model: its file name, chunk length, git blob id and converted name."""

    name: str
    chunk_size: int
    blob_id: str

    @property
    def converted_name(self) -> str:
        return f"{self.chunk_size}_model_esm2_3b.pth"


ORIGINAL_MODELS = (
    OriginalModel("300_model.pth", 300, "a0b5b85e7c1e44f00cde146d091beb82b2c8e855"),
    OriginalModel("500_model.pth", 500, "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d"),
)


def _download(session: Any, url: str, part: Path, timeout: float, progress: bool) -> None:
    """Fetch ``url`` into ``part``, continuing a partial file with a Range request."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, stream=True, timeout=timeout, headers=headers) as response:
        if have and response.status_code == 416:  # the part is whole already
            return
        response.raise_for_status()
        if have and response.status_code != 206:
            log.info("%s: the server does not resume; downloading from the start", url)
            have = 0
        length = response.headers.get("content-length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "ab" if have else "wb") as handle, tqdm(
                desc=part.name[: -len(PART_SUFFIX)], total=total, initial=have, unit="B", unit_scale=True,
                unit_divisor=1024, disable=not progress, leave=False) as bar:
            for block in response.iter_content(chunk_size=BLOCK_SIZE):
                if block:
                    handle.write(block)
                    bar.update(len(block))
            handle.flush()
            os.fsync(handle.fileno())
    if total is not None and part.stat().st_size != total:
        raise DataSourceError(f"{url}: download incomplete ({part.stat().st_size} of {total} bytes); "
                              "run again to resume")


def fetch_original(session: Any, model: OriginalModel, out_dir: Path, *, url_template: str = ORIGINAL_URL_TEMPLATE,
                   commit: str = ORIGINAL_COMMIT, timeout: float = 60.0, progress: bool = True) -> Path:
    """The verified original file in ``out_dir`` (downloaded unless a verified copy is there)."""
    target = out_dir / model.name
    if target.is_file():
        found = git_blob_id(target)
        if found == model.blob_id:
            log.info("%s: present and verified; skipped", target)
            return target
        raise InputError(f"{target}: present but its git blob id is {found}, not {model.blob_id}; "
                         "move it away and run again")
    url = url_template.format(commit=commit, name=model.name)
    part = target.with_name(target.name + PART_SUFFIX)
    _download(session, url, part, timeout, progress)
    found = git_blob_id(part)
    if found != model.blob_id:
        part.unlink()
        raise DataSourceError(f"{url}: refused and removed: git blob id {found} is not the expected "
                              f"{model.blob_id} (corrupted or tampered download)")
    os.replace(part, target)
    log.info("%s: downloaded and verified (%d bytes)", target, target.stat().st_size)
    return target


def fetch_and_convert(session: Any, out_dir: Path, *, models: Sequence[OriginalModel] | None = None,
                      url_template: str | None = None, commit: str = ORIGINAL_COMMIT,
                      timeout: float = 60.0, progress: bool = True, protein_model: str = ESM2_3B_MODEL) -> list[Path]:
    """Fetch, verify and convert each original model (default: :data:`ORIGINAL_MODELS`); returns the checkpoints.

    ``protein_model`` is recorded in the converted checkpoints (ESM2-3B, or a local copy of it).
    """
    from .legacy import convert_legacy_checkpoint

    models = ORIGINAL_MODELS if models is None else models
    url_template = ORIGINAL_URL_TEMPLATE if url_template is None else url_template

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for model in models:
        converted = out_dir / model.converted_name
        if converted.is_file():
            log.info("%s: present; skipped", converted)
            written.append(converted)
            continue
        source = fetch_original(session, model, out_dir, url_template=url_template, commit=commit,
                                timeout=timeout, progress=progress)
        checkpoint = convert_legacy_checkpoint(source, converted, chunk_size=model.chunk_size,
                                               protein_model=protein_model)
        log.info("wrote %s: DNA %d (%s) + protein %d (%s), %d-bp chunks", converted, checkpoint["dna_dim"],
                 checkpoint["dna_model"], checkpoint["protein_dim"], checkpoint["protein_model"], model.chunk_size)
        written.append(converted)
    return written
