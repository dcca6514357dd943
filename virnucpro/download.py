"""The download engine: ``download_data.py``'s run (RefSeq training genomes, or the original models).

:func:`run_download` takes one frozen :class:`DownloadRequest` (built by the script from its command
line).  The viral release and a seeded sample of host GenBank files (with their genome FASTA) are
planned from the release listings (:func:`plan_downloads`, the original's sampling) and fetched
(:func:`download_file`: a file already present with the server's size is skipped, each written under
a temporary name); with ``original_models`` the published models are fetched, verified and converted
instead (:mod:`virnucpro.original_models`).  A failed request is one line (:func:`network_error`, exit 3).
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlparse

import requests
from tqdm.auto import tqdm

from . import outputs
from .errors import EXIT_OK, DataSourceError, VirNucProError, first_line
from .files import atomic_write

log = logging.getLogger("virnucpro.download_data")

RELEASE_URL = "https://ftp.ncbi.nlm.nih.gov/refseq/release/"
VIRAL_FILES = ("viral/viral.1.1.genomic.fna.gz", "viral/viral.1.genomic.gbff.gz")
# (release folder, GenBank files sampled), in the original order (the sampling depends on it)
HOST_GROUPS = (
    ("bacteria", 1), ("archaea", 1), ("fungi", 1), ("protozoa", 1),
    ("plant", 10), ("invertebrate", 10), ("vertebrate_mammalian", 10), ("vertebrate_other", 10),
)
GBFF_SUFFIX = outputs.GENBANK_SUFFIX
FNA_FOR_GBFF = f"1.{outputs.GENOME_FASTA_SUFFIX}"  # X.genomic.gbff.gz annotates X.1.genomic.fna.gz
BLOCK_SIZE = 1 << 16
DEFAULT_TIMEOUT = 60.0
#: The folders the files are saved in when none is given.
GENOMES_DIR, ORIGINAL_MODELS_DIR = "data", "."


@dataclass(frozen=True)
class DownloadRequest:
    """What a download run is asked to fetch (see ``download_data.py --help``)."""

    out_dir: Path | None = None  # None: data, or . with original_models
    original_models: bool = False
    dry_run: bool = False
    seed: int = 42
    max_genomes: int | None = None
    base_url: str = RELEASE_URL
    timeout: float = DEFAULT_TIMEOUT
    progress: bool = True

    @property
    def folder(self) -> Path:
        """The folder the files are saved in: ``out_dir``, else the default of the mode."""
        if self.out_dir is not None:
            return self.out_dir
        return Path(ORIGINAL_MODELS_DIR if self.original_models else GENOMES_DIR)


def make_session() -> requests.Session:
    """The HTTP session used for every request (tests replace it)."""
    session = requests.Session()
    session.headers["User-Agent"] = "VirNucPro-FastESM download_data.py"
    return session


def list_genomic_links(session: Any, url: str, timeout: float) -> list[str]:
    """Absolute URLs of the links mentioning 'genomic' on a release listing, in page order."""
    try:
        from bs4 import BeautifulSoup
    except ImportError:
        raise VirNucProError("beautifulsoup4 is not installed (pip install beautifulsoup4)") from None
    response = session.get(url, timeout=timeout)
    response.raise_for_status()
    soup = BeautifulSoup(response.content, "html.parser")
    links = []
    for anchor in soup.find_all("a", href=True):
        link = urljoin(url, anchor["href"])
        if "genomic" in link:
            links.append(link)
    return links


def plan_downloads(session: Any, base_url: str, seed: int, timeout: float,
                   max_genomes: int | None = None) -> list[str]:
    """The URLs to fetch: the viral release, then the sampled host files (no duplicates).

    ``max_genomes`` caps the GenBank files sampled per host group (a small rehearsal).
    """
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    rng = random.Random(seed)
    urls = [urljoin(base_url, name) for name in VIRAL_FILES]
    for group, count in HOST_GROUPS:
        listing = urljoin(base_url, f"{group}/")
        gbff_files = [link for link in list_genomic_links(session, listing, timeout) if link.endswith(GBFF_SUFFIX)]
        if not gbff_files:
            log.warning("%s: no *%s files listed", listing, GBFF_SUFFIX)
        count = count if max_genomes is None else min(count, max_genomes)
        sampled = rng.sample(gbff_files, min(count, len(gbff_files)))
        log.info("%s: %s", group, ", ".join(PurePosixPath(urlparse(u).path).name for u in sampled) or "nothing")
        for gbff in sampled:
            urls.append(gbff)
            urls.append(gbff[: -len(GBFF_SUFFIX)] + FNA_FOR_GBFF)
    return list(dict.fromkeys(urls))


def local_path(url: str, out_dir: Path) -> Path:
    """Where ``url`` is saved in ``out_dir``: the last part of its path."""
    name = PurePosixPath(urlparse(url).path).name
    if not name or name in (".", ".."):
        raise VirNucProError(f"{url}: no file name in the URL")
    return out_dir / name


def _content_length(response: Any) -> int | None:
    value = response.headers.get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def download_file(session: Any, url: str, out_dir: Path, timeout: float, progress: bool) -> bool:
    """Fetch ``url`` into ``out_dir`` unless a file of the server's size is there; True if fetched."""
    target = local_path(url, out_dir)
    head = session.head(url, timeout=timeout, allow_redirects=True)
    head.raise_for_status()
    remote_size = _content_length(head)
    if target.is_file():
        if remote_size is not None and target.stat().st_size == remote_size:
            log.info("%s: present with the right size (%d bytes); skipped", target, remote_size)
            return False
        log.info("%s: present but %s; downloading it again", target,
                 "the server gives no size" if remote_size is None else
                 f"{target.stat().st_size} bytes instead of {remote_size}")
    with session.get(url, stream=True, timeout=timeout) as response:
        response.raise_for_status()
        expected = _content_length(response) or remote_size
        written = 0
        with atomic_write(target, "wb") as handle, tqdm(
                desc=target.name, total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not progress, leave=False) as bar:
            for block in response.iter_content(chunk_size=BLOCK_SIZE):
                if block:
                    handle.write(block)
                    written += len(block)
                    bar.update(len(block))
            if expected is not None and written != expected:
                raise DataSourceError(f"{url}: download incomplete ({written} of {expected} bytes); "
                                      "run again to retry")
    log.info("%s: downloaded (%d bytes)", target, written)
    return True


def network_error(exc: requests.RequestException) -> DataSourceError:
    """The one-line error of a failed request: what failed, and that a rerun resumes."""
    url = getattr(getattr(exc, "request", None), "url", None)
    text = first_line(exc, 1000)
    where = f" ({url})" if url and url not in text else ""
    return DataSourceError(f"network error{where}: {text}; check the connection and run again "
                           "(finished files are kept)")


def fetch_original_models(request: DownloadRequest) -> int:
    """``original_models``: fetch, verify and convert the published models (or list them, ``dry_run``)."""
    from . import original_models

    out_dir = request.folder
    if request.dry_run:
        for model in original_models.ORIGINAL_MODELS:
            url = original_models.ORIGINAL_URL_TEMPLATE.format(commit=original_models.ORIGINAL_COMMIT, name=model.name)
            print(f"{url}\t{out_dir / model.name}\t{out_dir / model.converted_name}")
        return EXIT_OK
    session = make_session()
    try:
        written = original_models.fetch_and_convert(session, out_dir, timeout=request.timeout,
                                                    progress=request.progress)
    except requests.RequestException as exc:
        raise network_error(exc) from None
    finally:
        session.close()
    log.info("ready: %s (predict with: python prediction.py in.fa 300 out/ --model %s)",
             ", ".join(str(p) for p in written), written[0])
    return EXIT_OK


def run_download(request: DownloadRequest) -> int:
    """Fetch the planned files not yet present (or list them, ``dry_run``); the original models instead when asked."""
    if request.original_models:
        return fetch_original_models(request)
    out_dir = request.folder
    session = make_session()
    progress = request.progress
    try:
        urls = plan_downloads(session, request.base_url, request.seed, request.timeout, request.max_genomes)
        if request.dry_run:
            for url in urls:
                target = local_path(url, out_dir)
                state = "  (present)" if target.is_file() else ""
                print(f"{url}\t{target}{state}")
            log.info("%d file(s) would be downloaded to %s", len(urls), out_dir)
            return EXIT_OK
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VirNucProError(f"{out_dir}: cannot create folder ({exc.strerror})") from None
        fetched = 0
        for url in tqdm(urls, desc="files", unit="file", disable=not progress):
            fetched += download_file(session, url, out_dir, request.timeout, progress)
    except requests.RequestException as exc:
        raise network_error(exc) from None
    finally:
        close = getattr(session, "close", None)
        if close:
            close()
    log.info("%d file(s) downloaded, %d already present, in %s", fetched, len(urls) - fetched, out_dir)
    return EXIT_OK
