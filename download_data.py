"""Download the RefSeq genomes VirNucPro is trained on.

    python download_data.py [--out-dir data] [--dry-run]

Downloads the viral release (viral.1.1.genomic.fna.gz + viral.1.genomic.gbff.gz) and
a seeded sample of host genomes from the NCBI RefSeq release listings: one GenBank
file (plus its ``.1.genomic.fna.gz`` sequences) for bacteria, archaea, fungi and
protozoa, ten for plant, invertebrate, vertebrate_mammalian and vertebrate_other, as
the original VirNucPro did (seed 42).  A file already present with the size the
server reports is skipped, so an interrupted run resumes; each file is written to a
temporary name and renamed when complete.  Then run make_train_dataset_300.py.

    python download_data.py --original-models [--out-dir .]

instead fetches the published VirNucPro models (300_model.pth, 500_model.pth) from the
original repository at a pinned commit, checks each against its git blob id (a file that
does not match is removed and refused, exit 3, as any data-source failure), and converts
them into 300_model_esm2_3b.pth / 500_model_esm2_3b.pth (see virnucpro/original_models.py).
"""
from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path, PurePosixPath
from typing import Any, Sequence
from urllib.parse import urljoin, urlparse

import requests
from tqdm.auto import tqdm

from virnucpro import cli
from virnucpro.errors import DataSourceError, VirNucProError, first_line
from virnucpro.files import atomic_write

log = logging.getLogger("virnucpro.download_data")

PROG = "download_data.py"
RELEASE_URL = "https://ftp.ncbi.nlm.nih.gov/refseq/release/"
VIRAL_FILES = ("viral/viral.1.1.genomic.fna.gz", "viral/viral.1.genomic.gbff.gz")
# (release folder, GenBank files sampled), in the original order (the sampling depends on it)
HOST_GROUPS = (
    ("bacteria", 1), ("archaea", 1), ("fungi", 1), ("protozoa", 1),
    ("plant", 10), ("invertebrate", 10), ("vertebrate_mammalian", 10), ("vertebrate_other", 10),
)
GBFF_SUFFIX = "genomic.gbff.gz"
FNA_FOR_GBFF = "1.genomic.fna.gz"
BLOCK_SIZE = 1 << 16
DEFAULT_TIMEOUT = 60.0


def build_parser() -> cli.CliArgumentParser:
    parser = cli.CliArgumentParser(
        prog=PROG,
        description="Download the RefSeq viral release and a seeded sample of host genomes for training.",
        epilog="Example: python download_data.py --out-dir data && python make_train_dataset_300.py",
    )
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="folder the files are saved in (default: data, or . with --original-models)")
    parser.add_argument("--original-models", action="store_true",
                        help="fetch the published VirNucPro 300/500 models instead (verified, then converted to "
                             "300_model_esm2_3b.pth / 500_model_esm2_3b.pth)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the files that would be downloaded (URL and local path) and stop")
    parser.add_argument("--seed", type=int, default=42, help="seed of the host-genome sampling")
    parser.add_argument("--max-genomes", type=cli.positive_int, default=None, metavar="N",
                        help="sample at most N GenBank files per host group (a small rehearsal; default: the "
                             "original counts)")
    parser.add_argument("--base-url", default=RELEASE_URL, help="RefSeq release folder")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the server before giving up")
    return parser


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


def _network_error(exc: requests.RequestException) -> DataSourceError:
    url = getattr(getattr(exc, "request", None), "url", None)
    text = first_line(exc, 1000)
    where = f" ({url})" if url and url not in text else ""
    return DataSourceError(f"network error{where}: {text}; check the connection and run again "
                           "(finished files are kept)")


def run_original_models(args: argparse.Namespace) -> int:
    """--original-models: fetch, verify and convert the published models."""
    from virnucpro import original_models

    out_dir = args.out_dir if args.out_dir is not None else Path(".")
    if args.dry_run:
        for model in original_models.ORIGINAL_MODELS:
            url = original_models.ORIGINAL_URL_TEMPLATE.format(commit=original_models.ORIGINAL_COMMIT, name=model.name)
            print(f"{url}\t{out_dir / model.name}\t{out_dir / model.converted_name}")
        return cli.EXIT_OK
    session = make_session()
    try:
        written = original_models.fetch_and_convert(session, out_dir, timeout=args.timeout, progress=not args.quiet)
    except requests.RequestException as exc:
        raise _network_error(exc) from None
    finally:
        session.close()
    log.info("ready: %s (predict with: python prediction.py in.fa 300 out/ --model %s)",
             ", ".join(str(p) for p in written), written[0])
    return cli.EXIT_OK


def run(args: argparse.Namespace) -> int:
    if args.original_models:
        return run_original_models(args)
    if args.out_dir is None:
        args.out_dir = Path("data")
    session = make_session()
    progress = not args.quiet
    try:
        urls = plan_downloads(session, args.base_url, args.seed, args.timeout, args.max_genomes)
        if args.dry_run:
            for url in urls:
                target = local_path(url, args.out_dir)
                state = "  (present)" if target.is_file() else ""
                print(f"{url}\t{target}{state}")
            log.info("%d file(s) would be downloaded to %s", len(urls), args.out_dir)
            return cli.EXIT_OK
        try:
            args.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise VirNucProError(f"{args.out_dir}: cannot create folder ({exc.strerror})") from None
        fetched = 0
        for url in tqdm(urls, desc="files", unit="file", disable=not progress):
            fetched += download_file(session, url, args.out_dir, args.timeout, progress)
    except requests.RequestException as exc:
        raise _network_error(exc) from None
    finally:
        close = getattr(session, "close", None)
        if close:
            close()
    log.info("%d file(s) downloaded, %d already present, in %s", fetched, len(urls) - fetched, args.out_dir)
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see --help)."""
    return cli.script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
