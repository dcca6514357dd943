"""download_data.py offline: a fake requests session stands in for NCBI."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import requests

import download_data
from virnucpro import download

BASE = "https://ftp.ncbi.nlm.nih.gov/refseq/release/"


def listing(group: str, count: int) -> bytes:
    """An NCBI-like directory page with ``count`` GenBank files and their FASTA files."""
    rows = ['<a href="../">Parent Directory</a>', f'<a href="{group}.wgs_mstr.gbff.gz">x</a>']
    for k in range(1, count + 1):
        rows.append(f'<a href="{group}.{k}.genomic.gbff.gz">{group}.{k}.genomic.gbff.gz</a>')
        rows.append(f'<a href="{group}.{k}.1.genomic.fna.gz">{group}.{k}.1.genomic.fna.gz</a>')
        rows.append(f'<a href="{group}.{k}.protein.faa.gz">p</a>')
    return ("<html><body><pre>" + "\n".join(rows) + "</pre></body></html>").encode()


class FakeResponse:
    def __init__(self, url: str, content: bytes, status: int = 200, length: int | None = -1):
        self.url = url
        self.content = content
        self.status_code = status
        size = len(content) if length == -1 else length
        self.headers = {} if size is None else {"content-length": str(size)}

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise requests.HTTPError(f"{self.status_code} Client Error for url: {self.url}")

    def iter_content(self, chunk_size: int = 1):
        for start in range(0, len(self.content), 7):
            yield self.content[start:start + 7]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


class FakeSession:
    """Serves listings for every release folder and a small body for every file."""

    def __init__(self, sizes: dict[str, int]):
        self.sizes = sizes
        self.gets: list[str] = []
        self.fail_on: str | None = None

    def body(self, url: str) -> bytes:
        return url.encode() * 3

    def _response(self, url: str) -> FakeResponse:
        if self.fail_on and self.fail_on in url:
            raise requests.ConnectionError(f"Failed to establish a new connection to {url}")
        if url.endswith("/"):
            group = url.rstrip("/").rsplit("/", 1)[-1]
            return FakeResponse(url, listing(group, self.sizes.get(group, 0)))
        return FakeResponse(url, self.body(url))

    def get(self, url: str, stream: bool = False, timeout: float | None = None) -> FakeResponse:
        self.gets.append(url)
        return self._response(url)

    def head(self, url: str, timeout: float | None = None, allow_redirects: bool = True) -> FakeResponse:
        response = self._response(url)
        response.content = b""
        return response

    def close(self) -> None:
        pass


SIZES = {"bacteria": 5, "archaea": 3, "fungi": 2, "protozoa": 2, "plant": 12,
         "invertebrate": 4, "vertebrate_mammalian": 15, "vertebrate_other": 10}


@pytest.fixture
def session(monkeypatch: pytest.MonkeyPatch) -> FakeSession:
    fake = FakeSession(SIZES)
    monkeypatch.setattr(download, "make_session", lambda: fake)
    return fake


def expected_urls() -> list[str]:
    """The original's sampling, written out independently."""
    random.seed(42)
    urls = [BASE + "viral/viral.1.1.genomic.fna.gz", BASE + "viral/viral.1.genomic.gbff.gz"]
    for group, count in download.HOST_GROUPS:
        gbff = [f"{BASE}{group}/{group}.{k}.genomic.gbff.gz" for k in range(1, SIZES[group] + 1)]
        for url in random.sample(gbff, min(count, len(gbff))):
            urls += [url, url.replace("genomic.gbff.gz", "1.genomic.fna.gz")]
    return urls


def test_dry_run_lists_the_original_sample(session: FakeSession, tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "data"
    assert download_data.main(["--out-dir", str(out), "--dry-run", "-q"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    urls = [line.split("\t")[0] for line in lines]
    assert urls == expected_urls()
    assert len(urls) == 2 + 2 * (1 + 1 + 1 + 1 + 10 + 4 + 10 + 10)
    assert not out.exists()  # nothing downloaded
    assert session.gets and all(u.endswith("/") for u in session.gets)  # listings only


def test_the_default_folder_depends_on_what_is_fetched(tmp_path: Path) -> None:
    """RefSeq genomes go to data/, the original models to the current folder; --out-dir wins either way."""
    def folder(*argv: str) -> Path:
        return download_data.build_request(download_data.build_parser().parse_args(list(argv))).folder

    assert folder() == Path("data")
    assert folder("--original-models") == Path(".")
    assert folder("--original-models", "--out-dir", str(tmp_path)) == folder("--out-dir", str(tmp_path)) == tmp_path


def test_dry_run_of_the_original_models_lists_them_where_they_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    from virnucpro import original_models

    monkeypatch.chdir(tmp_path)
    assert download_data.main(["--original-models", "--dry-run", "-q"]) == 0
    rows = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [(local, converted) for _, local, converted in rows] == [
        (model.name, model.converted_name) for model in original_models.ORIGINAL_MODELS]
    assert list(tmp_path.iterdir()) == []  # nothing fetched


def test_downloads_then_resumes(session: FakeSession, tmp_path: Path) -> None:
    out = tmp_path / "data"
    assert download_data.main(["--out-dir", str(out), "-q"]) == 0
    urls = expected_urls()
    for url in urls:
        target = out / url.rsplit("/", 1)[-1]
        assert target.read_bytes() == session.body(url)
    assert sorted(p.name for p in out.iterdir()) == sorted(u.rsplit("/", 1)[-1] for u in urls)
    # second run: every size matches, nothing is fetched again; a wrong-size file is replaced
    bad = out / "viral.1.genomic.gbff.gz"
    bad.write_bytes(b"truncated")
    session.gets.clear()
    assert download_data.main(["--out-dir", str(out), "-q"]) == 0
    fetched = [u for u in session.gets if not u.endswith("/")]
    assert fetched == [BASE + "viral/viral.1.genomic.gbff.gz"]
    assert bad.read_bytes() == session.body(BASE + "viral/viral.1.genomic.gbff.gz")


def test_network_error_is_one_line_exit_3(session: FakeSession, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    session.fail_on = "fungi/"
    assert download_data.main(["--out-dir", str(tmp_path / "data"), "-q"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("download_data.py: error: network error")


def test_http_error_mid_download_leaves_no_partial_file(session: FakeSession, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    session.fail_on = "viral.1.genomic.gbff.gz"
    out = tmp_path / "data"
    assert download_data.main(["--out-dir", str(out), "-q"]) == 3
    assert "network error" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["viral.1.1.genomic.fna.gz"]


def test_short_body_is_refused(session: FakeSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture) -> None:
    original = session._response

    def short(url: str) -> FakeResponse:
        response = original(url)
        if not url.endswith("/"):
            response.headers["content-length"] = str(len(response.content) + 100)
        return response

    monkeypatch.setattr(session, "_response", short)
    out = tmp_path / "data"
    assert download_data.main(["--out-dir", str(out), "-q"]) == 3
    assert "incomplete" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_max_genomes_caps_each_host_group(tmp_path, capsys):
    session = FakeSession(SIZES)
    urls = download.plan_downloads(session, BASE, 42, 1.0, max_genomes=2)
    gbff = [u for u in urls if u.endswith(download.GBFF_SUFFIX) and "/viral/" not in u]
    per_group = {}
    for url in gbff:
        group = url.split("/")[-2]
        per_group[group] = per_group.get(group, 0) + 1
    assert per_group["plant"] == 2 and per_group["vertebrate_mammalian"] == 2 and per_group["bacteria"] == 1
    assert len(urls) == 2 + 2 * len(gbff)
