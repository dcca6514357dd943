"""download_data.py --original-models offline: a local HTTP server on 127.0.0.1 stands in for GitHub."""
from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import requests
import torch

import download_data
from test_convert_checkpoint import save_original
from virnucpro.original_models import ORIGINAL_COMMIT
from virnucpro import download, original_models
from virnucpro.defaults import ESM2_3B_MODEL
from virnucpro.errors import DataSourceError
from virnucpro.original_models import OriginalModel, fetch_and_convert, git_blob_id


class Server:
    """Serves ``files`` (name -> bytes) under /<commit>/<name>, honouring Range; can cut a body short."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.cut_after: int | None = None  # bytes sent before the connection drops (once)
        self.requests: list[tuple[str, str | None]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                owner.requests.append((self.path, self.headers.get("Range")))
                name = self.path.rsplit("/", 1)[-1]
                if name not in owner.files:
                    self.send_error(404)
                    return
                body, start = owner.files[name], 0
                rng = self.headers.get("Range")
                if rng:
                    start = int(rng.split("=")[1].rstrip("-"))
                    if start >= len(body):
                        self.send_response(416)
                        self.end_headers()
                        return
                    self.send_response(206)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if owner.cut_after is not None:
                    payload, owner.cut_after = payload[:owner.cut_after], None
                self.wfile.write(payload)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.template = f"http://127.0.0.1:{self.httpd.server_address[1]}/{{commit}}/{{name}}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture()
def originals(tmp_path, monkeypatch):
    """Two original-format whole-model pickles (small widths), their bytes and the OriginalModel entries."""
    made = tmp_path / "made"
    made.mkdir()
    files, models = {}, []
    for chunk, seed in ((300, 0), (500, 1)):
        path = made / f"{chunk}_model.pth"
        save_original(path, "__main__", monkeypatch, input_dim=768 + 32, seed=seed)
        files[path.name] = path.read_bytes()
        models.append(OriginalModel(path.name, chunk, blob_id(files[path.name])))
    return files, models


def test_git_blob_id_matches_git(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"hello\n")
    assert git_blob_id(path) == "ce013625030ba8dba906f756967f9e9ca394464a"  # `git hash-object` of "hello\n"


def test_real_ids_and_pinned_url_are_the_defaults():
    assert [(m.name, m.chunk_size, m.blob_id) for m in original_models.ORIGINAL_MODELS] == [
        ("300_model.pth", 300, "a0b5b85e7c1e44f00cde146d091beb82b2c8e855"),
        ("500_model.pth", 500, "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d")]
    assert original_models.ORIGINAL_URL_TEMPLATE.format(commit=original_models.ORIGINAL_COMMIT,
                                                        name="300_model.pth") == \
        "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/0f93f2755a7ea1acd3ff1bcf182892f960ef3326/300_model.pth"


def test_fetch_verify_convert_and_rerun_skips(tmp_path, originals):
    files, models = originals
    out = tmp_path / "out"
    with Server(files) as server:
        written = fetch_and_convert(download.make_session(), out, models=models, url_template=server.template,
                                    progress=False)
        assert [p.name for p in written] == ["300_model_esm2_3b.pth", "500_model_esm2_3b.pth"]
        assert [path for path, _ in server.requests] == [f"/{ORIGINAL_COMMIT}/{name}" for name in ("300_model.pth", "500_model.pth")]
        for model in models:
            assert (out / model.name).read_bytes() == files[model.name]
        checkpoint = torch.load(written[1], weights_only=True)
        assert (checkpoint["chunk_size"], checkpoint["protein_model"], checkpoint["input_dim"]) == \
            (500, ESM2_3B_MODEL, 768 + 32)
        assert not list(out.glob("*.part"))
        # a rerun finds everything done; with the converted files gone, it reconverts from the verified originals
        server.requests.clear()
        fetch_and_convert(download.make_session(), out, models=models, url_template=server.template,
                          progress=False)
        written[0].unlink()
        fetch_and_convert(download.make_session(), out, models=models, url_template=server.template,
                          progress=False)
        assert server.requests == []
        assert written[0].is_file()


def test_interrupted_download_resumes_with_range(tmp_path, originals):
    files, models = originals
    out = tmp_path / "out"
    with Server(files) as server:
        server.cut_after = 300_000
        with pytest.raises(requests.RequestException):  # the CLI turns it into a one-line exit 3
            fetch_and_convert(download.make_session(), out, models=models[:1],
                              url_template=server.template, progress=False)
        have = (out / "300_model.pth.part").stat().st_size
        assert 0 < have <= 300_000
        assert not (out / "300_model.pth").exists()
        fetch_and_convert(download.make_session(), out, models=models[:1], url_template=server.template,
                          progress=False)
        assert server.requests[-1] == ("/0f93f2755a7ea1acd3ff1bcf182892f960ef3326/300_model.pth", f"bytes={have}-")
    assert (out / "300_model.pth").read_bytes() == files["300_model.pth"]
    assert (out / "300_model_esm2_3b.pth").is_file()


def test_tampered_download_is_refused_and_removed(tmp_path, originals, monkeypatch, capsys):
    files, models = originals
    tampered = dict(files)
    body = bytearray(files["300_model.pth"])
    body[-100] ^= 0xFF
    tampered["300_model.pth"] = bytes(body)
    out = tmp_path / "out"
    monkeypatch.setattr(original_models, "ORIGINAL_MODELS", tuple(models))
    with Server(tampered) as server:
        monkeypatch.setattr(original_models, "ORIGINAL_URL_TEMPLATE", server.template)
        code = download_data.main(["--original-models", "--out-dir", str(out), "-q"])
    err = capsys.readouterr().err
    assert code == 3
    assert len(err.strip().splitlines()) == 1 and "refused and removed" in err and models[0].blob_id in err
    assert list(out.iterdir()) == []  # nothing kept, nothing converted


def test_cli_network_error_is_one_line_exit_3(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(original_models, "ORIGINAL_URL_TEMPLATE", "http://127.0.0.1:9/{commit}/{name}")
    code = download_data.main(["--original-models", "--out-dir", str(tmp_path / "out"), "-q", "--timeout", "5"])
    err = capsys.readouterr().err
    assert code == 3
    assert len(err.strip().splitlines()) == 1 and "network error" in err


def test_cli_dry_run_lists_the_pinned_urls(tmp_path, capsys):
    assert download_data.main(["--original-models", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/0f93f2755a7ea1acd3ff1bcf182892f960ef3326/300_model.pth\t")
    assert lines[1].endswith("500_model_esm2_3b.pth")
    assert list(tmp_path.iterdir()) == []


def test_present_original_with_wrong_id_is_left_alone(tmp_path, originals):
    files, models = originals
    out = tmp_path / "out"
    out.mkdir()
    (out / "300_model.pth").write_bytes(b"someone else's file")
    with Server(files) as server:
        with pytest.raises(Exception, match="move it away"):
            fetch_and_convert(download.make_session(), out, models=models[:1], url_template=server.template,
                              progress=False)
        assert server.requests == []
    assert (out / "300_model.pth").read_bytes() == b"someone else's file"
