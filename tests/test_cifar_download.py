"""The CIFAR downloader (smoothjax.data.load_cifar) on small archives in the official format.

The archives are built here with the official member names and pickled dicts, and served from
a local HTTP server on 127.0.0.1 (or a ``file://`` URL): no network.
"""

import dataclasses
import hashlib
import http.server
import io
import os
import pathlib
import pickle
import socket
import tarfile
import threading
import time

import numpy as np
import pytest

from smoothjax import data
from smoothjax.data import _cifar_download as cifar_download

DatasetError = data.DatasetError


# ---------------------------------------------------------------------------------------------
# Archives in the official format
# ---------------------------------------------------------------------------------------------


def _images(n, seed):
  """(n, 32, 32, 3) uint8 images and their official (n, 3072) rows (red, green, blue planes)."""
  x = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  rows = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).reshape(n, 3072)
  return x, rows


def _pickled(obj):
  # Protocol 2 with bytes keys, like the official (Python 2) batches: bytes go through
  # _codecs.encode, arrays through NumPy's _reconstruct.
  return pickle.dumps(obj, protocol=2)


def _tar(members):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, blob in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(blob)
      tar.addfile(info, io.BytesIO(blob))
  return buf.getvalue()


def _cifar10_archive(per_batch=2, num_test=3):
  xs, ys, members = [], [], {}
  for i in range(1, 6):
    x, rows = _images(per_batch, seed=i)
    y = [(i + j) % 10 for j in range(per_batch)]
    members[f"cifar-10-batches-py/data_batch_{i}"] = _pickled(
        {b"batch_label": f"training batch {i} of 5".encode(), b"labels": y, b"data": rows,
         b"filenames": [b"a.png"] * per_batch})
    xs.append(x)
    ys += y
  x_test, rows = _images(num_test, seed=9)
  y_test = list(range(num_test))
  members["cifar-10-batches-py/test_batch"] = _pickled(
      {b"batch_label": b"testing batch 1 of 1", b"labels": y_test, b"data": rows})
  members["cifar-10-batches-py/batches.meta"] = _pickled(
      {b"label_names": [n.encode() for n in data.CIFAR10_CLASSES], b"num_vis": 3072,
       b"num_cases_per_batch": per_batch})
  members["cifar-10-batches-py/readme.html"] = b"<html></html>"
  expected = {"x_train": np.concatenate(xs), "y_train": np.asarray(ys),
              "x_test": x_test, "y_test": np.asarray(y_test)}
  return _tar(members), expected


def _cifar100_archive(num_train=20, num_test=4):
  x, rows = _images(num_train, seed=1)
  fine = [(7 * j) % 100 for j in range(num_train)]
  x_test, rows_test = _images(num_test, seed=2)
  fine_test = [99 - j for j in range(num_test)]
  members = {
      "cifar-100-python/train": _pickled(
          {b"data": rows, b"fine_labels": fine, b"coarse_labels": [f % 20 for f in fine]}),
      "cifar-100-python/test": _pickled(
          {b"data": rows_test, b"fine_labels": fine_test,
           b"coarse_labels": [f % 20 for f in fine_test]}),
      "cifar-100-python/meta": _pickled(
          {b"fine_label_names": [n.encode() for n in data.CIFAR100_CLASSES],
           b"coarse_label_names": [str(i).encode() for i in range(20)]}),
  }
  expected = {"x_train": x, "y_train": np.asarray(fine), "x_test": x_test,
              "y_test": np.asarray(fine_test)}
  return _tar(members), expected


def _sums(blob):
  return {"md5": hashlib.md5(blob).hexdigest(), "sha256": hashlib.sha256(blob).hexdigest()}


# ---------------------------------------------------------------------------------------------
# A local HTTP server with scripted failures
# ---------------------------------------------------------------------------------------------


class _Server:
  """Serves ``files`` on 127.0.0.1; ``truncate`` = how many next responses stop halfway."""

  def __init__(self):
    self.files = {}
    self.truncate = 0
    self.ranges = True
    self.requests = []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):

      def log_message(self, *args):  # keep the test output clean
        pass

      def do_GET(self):
        server.requests.append((self.path, self.headers.get("Range")))
        blob = server.files.get(self.path)
        if blob is None:
          self.send_error(404)
          return
        start = 0
        rng = self.headers.get("Range")
        if rng and server.ranges:
          start = int(rng.split("=")[1].split("-")[0])
          self.send_response(206)
          self.send_header("Content-Range", f"bytes {start}-{len(blob) - 1}/{len(blob)}")
        else:
          self.send_response(200)
        body = blob[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.truncate > 0:
          server.truncate -= 1
          self.wfile.write(body[:len(body) // 2])
          self.wfile.flush()
          self.close_connection = True
          return
        self.wfile.write(body)

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def url(self, path):
    return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
  # The local server must be reached directly, whatever proxy the machine is configured with.
  for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
              "ALL_PROXY"):
    monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server():
  s = _Server()
  yield s
  s.close()


def _closed_port_url():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  return f"http://127.0.0.1:{port}/cifar-10-python.tar.gz"


def _cache_files(cache):
  return sorted(str(p.relative_to(cache)) for p in pathlib.Path(cache).rglob("*") if p.is_file())


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.official_cifar_urls
def test_published_checksums():
  # The checksums published on https://www.cs.toronto.edu/~kriz/cifar.html (MD5; also
  # torchvision's CIFAR10/CIFAR100) and the SHA-256 of the same files.
  assert cifar_download.ARCHIVES["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
  assert cifar_download.ARCHIVES["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
  for arc in cifar_download.ARCHIVES.values():
    assert arc.url.startswith("https://www.cs.toronto.edu/~kriz/") and arc.url.endswith(
        arc.filename)
    assert len(arc.sha256) == 64


def test_download_decode_and_cache_cifar10(server, tmp_path):
  blob, expected = _cifar10_archive()
  server.files["/c10.tar.gz"] = blob
  ds = cifar_download.load_cifar("cifar10", cache_dir=tmp_path, url=server.url("/c10.tar.gz"),
                                 progress=False, **_sums(blob))
  assert isinstance(ds, data.Dataset) and ds.name == "cifar10"
  assert ds.num_classes == 10 and ds.class_names == data.CIFAR10_CLASSES
  x_full, y_full = ds.split("train_full")
  np.testing.assert_array_equal(x_full, expected["x_train"])  # NHWC, batches in order
  np.testing.assert_array_equal(y_full, expected["y_train"])
  np.testing.assert_array_equal(ds.x_test, expected["x_test"])
  np.testing.assert_array_equal(ds.y_test, expected["y_test"])
  assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32  # as every source
  assert len(ds.x_val) == data.default_validation_size(10) == 1
  assert (tmp_path / "downloads" / "cifar-10-python.tar.gz").read_bytes() == blob
  assert cifar_download.archive_path("cifar10", tmp_path).is_file()
  assert not [f for f in _cache_files(tmp_path) if f.endswith((".part", ".tmp"))]

  arrays = cifar_download.read_archive(cifar_download.archive_path("cifar10", tmp_path),
                                       "cifar10")
  assert arrays["y_train"].dtype == np.int64 and arrays["x_train"].shape == (10, 32, 32, 3)

  # Second load: the decoded cache, no request and no archive needed.
  n = len(server.requests)
  (tmp_path / "downloads" / "cifar-10-python.tar.gz").unlink()
  again = cifar_download.load_cifar("cifar10", cache_dir=tmp_path, url=_closed_port_url(),
                                    progress=False, **_sums(blob))
  assert len(server.requests) == n
  np.testing.assert_array_equal(again.x_test, ds.x_test)


def test_cifar100_fine_labels(server, tmp_path):
  blob, expected = _cifar100_archive()
  server.files["/c100.tar.gz"] = blob
  ds = cifar_download.load_cifar("cifar100", cache_dir=tmp_path,
                                 url=server.url("/c100.tar.gz"), progress=False,
                                 validation_size=0, **_sums(blob))
  assert ds.num_classes == 100 and ds.class_names == data.CIFAR100_CLASSES
  np.testing.assert_array_equal(ds.x_train, expected["x_train"])
  np.testing.assert_array_equal(ds.y_train, expected["y_train"])
  np.testing.assert_array_equal(ds.y_test, expected["y_test"])
  assert (tmp_path / "downloads" / "cifar-100-python.tar.gz").is_file()


def test_injectable_module_constants(server, tmp_path, monkeypatch):
  blob, _ = _cifar10_archive()
  server.files["/mirror/c10.tar.gz"] = blob
  arc = dataclasses.replace(cifar_download.ARCHIVES["cifar10"],
                            url=server.url("/mirror/c10.tar.gz"), **_sums(blob))
  monkeypatch.setitem(cifar_download.ARCHIVES, "cifar10", arc)
  monkeypatch.setenv("SMOOTHJAX_CACHE", str(tmp_path / "env_cache"))
  path = cifar_download.download_archive("cifar10", progress=False)
  assert path == tmp_path / "env_cache" / "downloads" / "cifar-10-python.tar.gz"
  assert path.read_bytes() == blob


def test_progress_bar(server, tmp_path, capsys):
  blob, _ = _cifar10_archive()
  server.files["/c10.tar.gz"] = blob
  cifar_download.download_archive("cifar10", cache_dir=tmp_path, url=server.url("/c10.tar.gz"),
                                  progress=True, **_sums(blob))
  assert "cifar-10-python.tar.gz" in capsys.readouterr().err


def test_truncated_download_fails_cleanly_then_retry_succeeds(server, tmp_path):
  blob, _ = _cifar10_archive()
  server.files["/c10.tar.gz"] = blob
  server.truncate = 100  # every response stops halfway
  url = server.url("/c10.tar.gz")
  with pytest.raises(DatasetError) as e:
    cifar_download.download_archive("cifar10", cache_dir=tmp_path, url=url, retries=2,
                                    progress=False, **_sums(blob))
  msg = str(e.value)
  assert "\n" not in msg and "cut short 3 times" in msg
  assert str(cifar_download.archive_path("cifar10", tmp_path)) in msg  # where to put it
  assert len(server.requests) == 3
  assert _cache_files(tmp_path) == []  # nothing half-written

  server.truncate = 0
  path = cifar_download.download_archive("cifar10", cache_dir=tmp_path, url=url,
                                         progress=False, **_sums(blob))
  assert path.read_bytes() == blob
  assert _cache_files(tmp_path) == ["downloads/cifar-10-python.tar.gz"]


@pytest.mark.parametrize("ranges", [True, False], ids=["resumed", "restarted"])
def test_interrupted_download_resumes_or_restarts(server, tmp_path, ranges):
  blob, _ = _cifar10_archive()
  server.files["/c10.tar.gz"] = blob
  server.truncate, server.ranges = 1, ranges
  path = cifar_download.download_archive("cifar10", cache_dir=tmp_path,
                                         url=server.url("/c10.tar.gz"), progress=False,
                                         **_sums(blob))
  assert path.read_bytes() == blob
  assert [r for _, r in server.requests] == [None, f"bytes={len(blob) // 2}-"]
  assert _cache_files(tmp_path) == ["downloads/cifar-10-python.tar.gz"]


def test_bad_checksum_fails_cleanly_then_retry_succeeds(server, tmp_path):
  blob, _ = _cifar10_archive()
  server.files["/c10.tar.gz"] = blob[:-1] + bytes([blob[-1] ^ 1])  # one flipped bit
  url = server.url("/c10.tar.gz")
  with pytest.raises(DatasetError) as e:
    cifar_download.load_cifar("cifar10", cache_dir=tmp_path, url=url, progress=False,
                              **_sums(blob))
  msg = str(e.value)
  assert "\n" not in msg and "corrupt" in msg and _sums(blob)["md5"] in msg
  assert _cache_files(tmp_path) == []

  server.files["/c10.tar.gz"] = blob
  ds = cifar_download.load_cifar("cifar10", cache_dir=tmp_path, url=url, progress=False,
                                 **_sums(blob))
  assert len(ds.x_test) == 3


def test_sha256_checked_too(server, tmp_path):
  blob, _ = _cifar10_archive()
  server.files["/c10.tar.gz"] = blob
  with pytest.raises(DatasetError, match="sha256"):
    cifar_download.download_archive("cifar10", cache_dir=tmp_path, url=server.url("/c10.tar.gz"),
                                    md5=_sums(blob)["md5"], sha256="0" * 64, progress=False)
  assert _cache_files(tmp_path) == []


def test_offline_error_says_what_to_do(tmp_path):
  t0 = time.perf_counter()
  with pytest.raises(DatasetError) as e:
    cifar_download.load_cifar("cifar10", cache_dir=tmp_path, url=_closed_port_url(),
                              progress=False)
  assert time.perf_counter() - t0 < 10
  msg = str(e.value)
  assert "\n" not in msg and "offline" in msg and "not reachable" in msg
  assert str(tmp_path / "downloads" / "cifar-10-python.tar.gz") in msg
  assert "c58f30108f718f92721af3b95e74349a" in msg and "npz:" in msg
  assert _cache_files(tmp_path) == []


def test_offline_behind_a_proxy(tmp_path, monkeypatch):
  # With a proxy the direct probe is skipped; the download itself then fails as offline.
  monkeypatch.setenv("http_proxy", _closed_port_url().rsplit("/", 1)[0])
  with pytest.raises(DatasetError, match="offline"):
    cifar_download.download_archive("cifar10", cache_dir=tmp_path, url="http://example.invalid/x",
                                    progress=False)
  assert _cache_files(tmp_path) == []


def test_http_error(server, tmp_path):
  with pytest.raises(DatasetError, match="HTTP 404"):
    cifar_download.download_archive("cifar10", cache_dir=tmp_path, url=server.url("/missing"),
                                    progress=False)
  assert _cache_files(tmp_path) == []


def test_manually_placed_archive_is_used_offline(tmp_path):
  blob, expected = _cifar10_archive()
  dest = cifar_download.archive_path("cifar10", tmp_path)
  dest.parent.mkdir(parents=True)
  dest.write_bytes(blob)
  ds = cifar_download.load_cifar("cifar10", cache_dir=tmp_path, url=_closed_port_url(),
                                 progress=False, **_sums(blob))
  np.testing.assert_array_equal(ds.x_test, expected["x_test"])
  with pytest.raises(DatasetError, match="downloading is off"):
    cifar_download.download_archive("cifar100", cache_dir=tmp_path, download=False)


def test_corrupt_cached_archive_is_replaced(server, tmp_path):
  blob, _ = _cifar10_archive()
  dest = cifar_download.archive_path("cifar10", tmp_path)
  dest.parent.mkdir(parents=True)
  dest.write_bytes(b"not the archive")
  with pytest.raises(DatasetError, match="fails its checksum"):
    cifar_download.download_archive("cifar10", cache_dir=tmp_path, download=False,
                                    **_sums(blob))
  assert dest.read_bytes() == b"not the archive"  # kept until a verified copy replaces it
  server.files["/c10.tar.gz"] = blob
  cifar_download.download_archive("cifar10", cache_dir=tmp_path, url=server.url("/c10.tar.gz"),
                                  progress=False, **_sums(blob))
  assert dest.read_bytes() == blob


def test_file_url(tmp_path):
  blob, expected = _cifar10_archive()
  src = tmp_path / "mirror" / "cifar-10-python.tar.gz"
  src.parent.mkdir()
  src.write_bytes(blob)
  ds = cifar_download.load_cifar("cifar10", cache_dir=tmp_path / "cache", url=src.as_uri(),
                                 progress=False, **_sums(blob))
  np.testing.assert_array_equal(ds.x_train[:2], expected["x_train"][:2])


class _Evil:

  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code(tmp_path):
  blob, _ = _cifar10_archive()
  members = {}
  with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
    for m in tar:
      members[m.name] = tar.extractfile(m).read()
  members["cifar-10-batches-py/test_batch"] = pickle.dumps({b"data": _Evil()}, protocol=2)
  path = tmp_path / "evil.tar.gz"
  path.write_bytes(_tar(members))
  with pytest.raises(DatasetError, match="not allowed"):
    cifar_download.read_archive(path, "cifar10")


def test_missing_member_and_unknown_name(tmp_path):
  path = tmp_path / "empty.tar.gz"
  path.write_bytes(_tar({"cifar-10-batches-py/test_batch": b""}))
  with pytest.raises(DatasetError, match="lacks"):
    cifar_download.read_archive(path, "cifar10")
  with pytest.raises(DatasetError, match="no official archive"):
    cifar_download.archive_path("mnist", tmp_path)
