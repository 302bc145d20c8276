"""download_cifar against a loopback HTTP server: md5 check, atomic rename, then load()."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import numpy as np
import pytest

from r18lab.data import load
from r18lab.data.download import ARCHIVES, download_cifar
from r18lab.data.fakes import tar_folder, write_cifar_python
from r18lab.errors import DataError


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serve tmp_path/www on 127.0.0.1; yields (base url, folder, list of requested paths)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("R18LAB_CACHE", str(tmp_path / "cache"))
    www = tmp_path / "www"
    www.mkdir()
    requested: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www, requested
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def served_archive(tmp_path, server):
    base, www, requested = server
    folder, expected = write_cifar_python(tmp_path / "src", "cifar10", n_train=10, n_test=4)
    archive = tar_folder(folder, www / "cifar-10-python.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    return f"{base}/cifar-10-python.tar.gz", md5, expected, requested


def test_official_archive_table():
    assert ARCHIVES.get("cifar10").md5 == "c58f30108f718f92721af3b95e74349a"
    assert ARCHIVES.get("cifar100").url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def test_download_verifies_renames_and_loads(tmp_path, served_archive):
    url, md5, expected, requested = served_archive
    root = tmp_path / "data"
    path = download_cifar("cifar10", root, url=url, md5=md5)
    assert path == root / "cifar-10-python.tar.gz"
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]  # no temp file left
    np.testing.assert_array_equal(load(path, "train").images, expected["train"].images)
    np.testing.assert_array_equal(load(path, "test").labels, expected["test"].labels)
    assert download_cifar("cifar10", root, url=url, md5=md5) == path
    assert len(requested) == 1  # a verified copy is not fetched again


def test_md5_mismatch_leaves_nothing_behind(tmp_path, served_archive):
    url, _, _, requested = served_archive
    root = tmp_path / "data"
    with pytest.raises(DataError, match=r"has md5 [0-9a-f]{32}, expected 0{32}.*retry"):
        download_cifar("cifar10", root, url=url, md5="0" * 32)
    assert list(root.iterdir()) == [] and requested == ["/cifar-10-python.tar.gz"]


def test_http_error_and_unknown_name(tmp_path, server):
    base, _, _ = server
    with pytest.raises(DataError, match=r"cannot download .*/missing.tar.gz \(HTTP Error 404"):
        download_cifar("cifar100", tmp_path / "d", url=f"{base}/missing.tar.gz")
    assert list((tmp_path / "d").iterdir()) == []
    with pytest.raises(DataError, match="unknown CIFAR archive 'svhn'; choose one of: cifar10, cifar100"):
        download_cifar("svhn", tmp_path / "d")
