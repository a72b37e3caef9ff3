"""Tests of smoothjax.data: sources (npz, folders, tars, tfds), splits, cache, augmentation,
batches."""

import fractions
import io
import os
import socket
import tarfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from smoothjax import data
from smoothjax.data import _sources as data_sources
from conftest import shared_path  # tests/ is on sys.path (pytest's default import mode)

DatasetError = data.DatasetError


# ---------------------------------------------------------------------------------------------
# npz
# ---------------------------------------------------------------------------------------------


def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return f"npz:{path}"


def _rand_images(n, h=8, w=8, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_npz_lossless(lossless_npz):
  ds = data.load_dataset(f"npz:{lossless_npz}")
  with np.load(lossless_npz) as z:
    x_train, y_train, x_test, y_test = z["x_train"], z["y_train"], z["x_test"], z["y_test"]
  assert ds.num_classes == 10
  assert ds.class_names == data.CIFAR10_CLASSES
  # 2000 training images < 50,000: the last 10% (200) are the validation split.
  assert ds.x_train.shape == (1800, 32, 32, 3) and ds.x_val.shape == (200, 32, 32, 3)
  assert ds.x_test.shape == (1000, 32, 32, 3)
  for x in (ds.x_train, ds.x_val, ds.x_test):
    assert x.dtype == np.uint8
  for y in (ds.y_train, ds.y_val, ds.y_test):
    assert y.dtype == np.int32
  np.testing.assert_array_equal(ds.x_val, x_train[-200:])
  np.testing.assert_array_equal(ds.y_train, y_train[:1800])
  xf, yf = ds.split("train_full")
  np.testing.assert_array_equal(xf, x_train)
  np.testing.assert_array_equal(yf, y_train)
  xt, yt = ds.split("test")
  np.testing.assert_array_equal(xt, x_test)
  np.testing.assert_array_equal(yt, y_test)
  assert ds.image_shape == (32, 32, 3)


def test_validation_sizes():
  assert data.default_validation_size(60000) == 5000
  assert data.default_validation_size(50000) == 5000
  assert data.default_validation_size(49999) == 4999
  assert data.default_validation_size(2000) == 200
  x, y = _rand_images(30), np.arange(30) % 10
  ds = data.from_arrays(name="t", x_train=x, y_train=y, x_test=x[:5], y_test=y[:5])
  assert (len(ds.x_train), len(ds.x_val)) == (27, 3)
  ds = data.from_arrays(name="t", x_train=x, y_train=y, validation_size=7)
  assert (len(ds.x_train), len(ds.x_val)) == (23, 7)
  np.testing.assert_array_equal(ds.x_val, x[23:])
  ds = data.from_arrays(name="t", x_train=x, y_train=y, validation_size=0)
  assert len(ds.x_train) == 30
  with pytest.raises(DatasetError, match="no 'val' images"):
    ds.split("val")
  with pytest.raises(DatasetError, match="no 'test' images"):
    ds.split("test")
  for bad in (-1, 30, 31, 2.5):
    with pytest.raises(DatasetError, match="validation_size"):
      data.from_arrays(name="t", x_train=x, y_train=y, validation_size=bad)


def test_npz_test_only_and_num_classes(tmp_path):
  x, y = _rand_images(12), np.arange(12) % 10
  ds = data.load_dataset(_write_npz(tmp_path / "evalonly.npz", x_test=x, y_test=y))
  np.testing.assert_array_equal(ds.split("test")[0], x)
  assert len(ds.x_train) == len(ds.x_val) == 0
  with pytest.raises(DatasetError, match="no 'train' images"):
    ds.split("train")
  # Labels beyond 9: max + 1 classes, digit names.
  ds = data.load_dataset(_write_npz(tmp_path / "a.npz", x_test=x, y_test=np.arange(12) + 3))
  assert ds.num_classes == 15 and ds.class_names[-1] == "14"
  # "cifar100" in the file name: 100 classes with CIFAR-100's names.
  ds = data.load_dataset(_write_npz(tmp_path / "my_cifar100.npz", x_test=x, y_test=y))
  assert ds.num_classes == 100 and ds.class_names[:2] == ("apple", "aquarium_fish")
  assert len(set(data.CIFAR100_CLASSES)) == 100
  # An explicit class_names array wins.
  ds = data.load_dataset(_write_npz(tmp_path / "b.npz", x_test=x, y_test=y % 3,
                                    class_names=np.array(["a", "b", "c"])))
  assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c")
  # (N, 1) labels and other integer dtypes are accepted.
  ds = data.load_dataset(_write_npz(tmp_path / "c.npz", x_test=x,
                                    y_test=y.astype(np.uint8)[:, None]))
  np.testing.assert_array_equal(ds.y_test, y)


@pytest.mark.parametrize("arrays,match", [
    (dict(x_tr=1), "needs arrays x_test/y_test"),
    (dict(x_test=_rand_images(4)), "has x_test but no y_test"),
    (dict(x_test=_rand_images(4), y_test=np.zeros(4, int), x_train=_rand_images(4)),
     "has x_train but no y_train"),
    (dict(x_test=_rand_images(4).astype(np.float32), y_test=np.zeros(4, int)), "uint8"),
    (dict(x_test=_rand_images(4).transpose(0, 3, 1, 2), y_test=np.zeros(4, int)), "NCHW"),
    (dict(x_test=_rand_images(4)[..., 0], y_test=np.zeros(4, int)), "3 channels"),
    (dict(x_test=_rand_images(4), y_test=np.zeros(4)), "integer class ids"),
    (dict(x_test=_rand_images(4), y_test=np.zeros(3, int)), r"shape \(4,\)"),
    (dict(x_test=_rand_images(4), y_test=-np.ones(4, int)), "negative label"),
    (dict(x_test=_rand_images(4), y_test=np.full(4, 2), class_names=np.array(["a", "b"])),
     "out of range"),
    (dict(x_test=_rand_images(4), y_test=np.zeros(4, int), x_train=_rand_images(4, 9),
          y_train=np.zeros(4, int)), "differ in shape"),
])
def test_npz_errors(tmp_path, arrays, match):
  spec = _write_npz(tmp_path / "bad.npz", **arrays)
  with pytest.raises(DatasetError, match=match):
    data.load_dataset(spec)


def test_npz_unreadable(tmp_path):
  with pytest.raises(DatasetError, match="no such file"):
    data.load_dataset(f"npz:{tmp_path / 'missing.npz'}")
  (tmp_path / "junk.npz").write_bytes(b"not a zip file")
  with pytest.raises(DatasetError, match="not a readable .npz"):
    data.load_dataset(f"npz:{tmp_path / 'junk.npz'}")


@pytest.mark.parametrize("spec", ["", "imagenet_folder:", "npz:", "folder:", "csv:x.csv",
                                  "cifar10:x"])
def test_unknown_spec(spec):
  with pytest.raises(DatasetError, match="dataset spec"):
    data.load_dataset(spec)


def test_imagenet_spec_without_a_prepared_copy(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DatasetError, match="imagenet"):  # a lazy source: tfds imagenet2012
    data.load_dataset("imagenet", data_dir=tmp_path)


def test_unknown_split_is_value_error():
  ds = data.from_arrays(name="t", x_test=_rand_images(3), y_test=np.zeros(3, int))
  with pytest.raises(ValueError, match="unknown split 'validation'"):
    ds.split("validation")
  assert issubclass(DatasetError, ValueError)


# ---------------------------------------------------------------------------------------------
# image folders and tars
# ---------------------------------------------------------------------------------------------

# class -> number of images per split (uneven on purpose)
_TREE = {"train": {"cat": 5, "ant": 3, "dog": 4}, "test": {"dog": 2, "ant": 2, "cat": 1}}


def _png(img):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="PNG")
  return buf.getvalue()


def _make_tree(root, tree=_TREE, size=6, seed=0):
  """Writes split/class/NN.png files; returns {(split, class, fname): image}."""
  rng = np.random.default_rng(seed)
  images = {}
  for split, classes in tree.items():
    for cls, n in classes.items():
      d = root / split / cls
      d.mkdir(parents=True)
      for i in range(n):
        img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        fname = f"{i:02d}.png"
        (d / fname).write_bytes(_png(img))
        images[(split, cls, fname)] = img
  return images


def _expected(images, split):
  """Independent statement of the documented class-interleaved order."""
  classes = sorted({c for _, c, _ in images})
  items = sorted((c, f) for s, c, f in images if s == split)
  count = {c: sum(1 for cc, _ in items if cc == c) for c in classes}
  rank = {}
  keyed = []
  for c, f in items:
    r = rank[c] = rank.get(c, -1) + 1
    keyed.append((fractions.Fraction(2 * r + 1, 2 * count[c]), classes.index(c), c, f))
  keyed.sort()
  x = np.stack([images[(split, c, f)] for _, _, c, f in keyed])
  y = np.array([i for _, i, _, _ in keyed])
  return x, y


def _tar_of(root, tar_path, arcname="."):
  with tarfile.open(tar_path, "w") as tar:
    tar.add(root, arcname=arcname)
  return tar_path


def _check_tree_dataset(ds, images):
  assert ds.class_names == ("ant", "cat", "dog") and ds.num_classes == 3
  x_full, y_full = _expected(images, "train")
  x_test, y_test = _expected(images, "test")
  np.testing.assert_array_equal(ds.split("train_full")[0], x_full)  # exact PNG round trip
  np.testing.assert_array_equal(ds.split("train_full")[1], y_full)
  np.testing.assert_array_equal(ds.x_test, x_test)
  np.testing.assert_array_equal(ds.y_test, y_test)
  assert len(ds.x_val) == 1  # 12 training images -> 10% -> 1


def test_folder_and_tar_round_trip(tmp_path):
  src = tmp_path / "src"
  images = _make_tree(src)
  (src / "README.md").write_text("not an image")
  (src / "train" / "cat" / "._00.png").write_bytes(b"AppleDouble junk, ignored")
  cache = tmp_path / "cache"
  ds_dir = data.load_dataset(f"folder:{src}", cache_dir=cache)
  _check_tree_dataset(ds_dir, images)
  # A tar of the same tree, with "./" member names, and one nested under a root folder.
  for arcname in (".", "cifar_like"):
    tar = _tar_of(src, tmp_path / f"tree_{arcname.strip('.')}.tar", arcname)
    _check_tree_dataset(data.load_dataset(f"folder:{tar}", cache_dir=cache), images)
  # Compressed tars work too.
  with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as t:
    t.add(src, arcname=".")
  _check_tree_dataset(data.load_dataset(f"folder:{tmp_path / 'tree.tar.gz'}", cache_dir=cache),
                      images)
  # The source tree is untouched (the cache lives elsewhere).
  assert sorted(p.name for p in src.iterdir()) == ["README.md", "test", "train"]


def test_folder_grey_and_jpeg(tmp_path):
  root = tmp_path / "src"
  (root / "test" / "a").mkdir(parents=True)
  grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
  Image.fromarray(grey, mode="L").save(root / "test" / "a" / "g.png")
  rgb = np.full((8, 8, 3), (200, 30, 90), np.uint8)
  Image.fromarray(rgb).save(root / "test" / "a" / "j.JPG", format="JPEG", quality=95)
  ds = data.load_dataset(f"folder:{root}", cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(ds.x_test[0], np.repeat(grey[..., None], 3, -1))
  assert np.abs(ds.x_test[1].astype(int) - rgb).max() <= 4  # lossy, but the right colour


def test_folder_interleaved_order_is_stratified(tmp_path):
  tree = {"train": {c: 20 for c in "abcd"}, "test": {c: 5 for c in "abcd"}}
  _make_tree(tmp_path / "src", tree, size=4)
  ds = data.load_dataset(f"folder:{tmp_path / 'src'}", cache_dir=tmp_path / "cache")
  assert len(ds.x_val) == 8
  np.testing.assert_array_equal(np.bincount(ds.y_val), [2, 2, 2, 2])
  np.testing.assert_array_equal(ds.y_test[:8], [0, 1, 2, 3, 0, 1, 2, 3])


def test_folder_cache_reuse(tmp_path, monkeypatch):
  src = tmp_path / "src"
  images = _make_tree(src)
  tar = _tar_of(src, tmp_path / "tree.tar")
  cache = tmp_path / "cache"
  calls = []
  decode = data_sources._decode_image
  monkeypatch.setattr(data_sources, "_decode_image", lambda b, w: calls.append(w) or decode(b, w))
  for spec in (f"folder:{src}", f"folder:{tar}"):
    calls.clear()
    data.load_dataset(spec, cache_dir=cache)
    assert len(calls) == len(images)
    calls.clear()
    ds = data.load_dataset(spec, cache_dir=cache)  # from the cache: nothing decoded
    assert calls == []
    _check_tree_dataset(ds, images)
  files = sorted(p.name for p in cache.iterdir())
  assert len(files) == 2 and all(f.endswith(".npz") for f in files)  # no temporary left over
  # A changed source (new mtime) is decoded again.
  f = src / "train" / "cat" / "00.png"
  os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
  calls.clear()
  data.load_dataset(f"folder:{src}", cache_dir=cache)
  assert len(calls) == len(images)
  # SMOOTHJAX_CACHE is the default cache directory.
  monkeypatch.setenv("SMOOTHJAX_CACHE", str(tmp_path / "envcache"))
  data.load_dataset(f"folder:{tar}")
  assert len(list((tmp_path / "envcache").iterdir())) == 1
  # A corrupt cache file is ignored and rewritten.
  for p in cache.iterdir():
    p.write_bytes(b"garbage")
  calls.clear()
  _check_tree_dataset(data.load_dataset(f"folder:{tar}", cache_dir=cache), images)
  assert len(calls) == len(images)
  # Never inside the source tree.
  with pytest.raises(DatasetError, match="inside the dataset source"):
    data.load_dataset(f"folder:{src}", cache_dir=src / "cache")


def test_folder_errors(tmp_path):
  cache = tmp_path / "cache"
  with pytest.raises(DatasetError, match="no such file"):
    data.load_dataset(f"folder:{tmp_path / 'missing'}", cache_dir=cache)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DatasetError, match="no images"):
    data.load_dataset(f"folder:{tmp_path / 'empty'}", cache_dir=cache)
  (tmp_path / "empty" / "notes.txt").write_text("x")
  with pytest.raises(DatasetError, match="no images"):
    data.load_dataset(f"folder:{tmp_path / 'empty'}", cache_dir=cache)
  with pytest.raises(DatasetError, match="no images"):  # a tar without images
    data.load_dataset(f"folder:{_tar_of(tmp_path / 'empty', tmp_path / 'e.tar')}",
                      cache_dir=cache)
  (tmp_path / "notatar.tar").write_bytes(b"x" * 1000)
  with pytest.raises(DatasetError, match="neither a directory nor a tar"):
    data.load_dataset(f"folder:{tmp_path / 'notatar.tar'}", cache_dir=cache)

  img = _png(_rand_images(1)[0])
  flat = tmp_path / "outer" / "flat" / "cat"
  flat.mkdir(parents=True)
  (flat / "1.png").write_bytes(img)
  with pytest.raises(DatasetError, match="not in a <split>/<class>/"):
    data.load_dataset(f"folder:{flat.parent}", cache_dir=cache)
  with pytest.raises(DatasetError, match="unknown split folder 'flat'"):
    data.load_dataset(f"folder:{tmp_path / 'outer'}", cache_dir=cache)

  sizes = tmp_path / "sizes" / "train" / "a"
  sizes.mkdir(parents=True)
  (sizes / "1.png").write_bytes(img)
  (sizes / "2.png").write_bytes(_png(_rand_images(1, 9, 9)[0]))
  with pytest.raises(DatasetError, match="same size"):
    data.load_dataset(f"folder:{tmp_path / 'sizes'}", cache_dir=cache)

  broken = tmp_path / "broken" / "test" / "a"
  broken.mkdir(parents=True)
  (broken / "1.png").write_bytes(img[:40])
  with pytest.raises(DatasetError, match="cannot decode image"):
    data.load_dataset(f"folder:{tmp_path / 'broken'}", cache_dir=cache)


# ---------------------------------------------------------------------------------------------
# tfds
# ---------------------------------------------------------------------------------------------


def test_tfds_mock(monkeypatch, tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  # mock_data without TensorFlow: the USE_CODE policy generates random examples for
  # tfds.data_source (the split names must be given explicitly, which load_dataset does). The
  # mock fakes the data but not `is_prepared()`, which stays False for its fake data_dir.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with tfds.testing.mock_data(num_examples=40, policy=tfds.testing.MockPolicy.USE_CODE):
    ds = data.load_dataset("cifar10", data_dir=tmp_path, cache_dir=tmp_path / "cache")
    ds100 = data.load_dataset("cifar100", data_dir=tmp_path, cache_dir=tmp_path / "cache")
  assert ds.num_classes == 10 and ds.class_names == data.CIFAR10_CLASSES
  assert ds.x_train.shape == (36, 32, 32, 3) and ds.x_val.shape == (4, 32, 32, 3)
  assert ds.x_test.shape == (40, 32, 32, 3) and ds.x_train.dtype == np.uint8
  assert ds.y_train.dtype == np.int32 and 0 <= ds.y_train.min() and ds.y_train.max() < 10
  assert ds.x_train.std() > 10  # random pixels, not a constant
  assert ds100.num_classes == 100 and ds100.class_names == data.CIFAR100_CLASSES
  assert ds100.y_test.max() < 100
  assert not (tmp_path / "cache").exists()  # nothing real to cache


_TINY_TRAIN, _TINY_TEST = 30, 7


def _tiny_builder_cls():
  tfds = pytest.importorskip("tensorflow_datasets")

  class SmoothjaxTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images stored as raw uint8 tensors (encoding PNGs would need TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Tensor(shape=(8, 8, 3), dtype=np.uint8),
          "label": tfds.features.ClassLabel(names=["x", "y", "z"])}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(_TINY_TRAIN, 0),
              "test": self._generate_examples(_TINY_TEST, 1)}

    def _generate_examples(self, n, seed):
      for i, img in enumerate(_rand_images(n, seed=seed)):
        yield i, {"image": img, "label": i % 3}

  return SmoothjaxTinyImages


def _sorted_images(x, y):
  order = np.lexsort(x.reshape(len(x), -1).T[::-1])
  return x[order], y[order]


def test_tfds_prepared_array_record(tmp_path, monkeypatch):
  """The real (unmocked) read path: a dataset prepared as array_record, read without TF."""
  tfds = pytest.importorskip("tensorflow_datasets")
  builder = _tiny_builder_cls()(data_dir=str(tmp_path / "tfds"), file_format="array_record")
  builder.download_and_prepare()
  spec = "tfds:smoothjax_tiny_images"
  ds = data.load_dataset(spec, data_dir=tmp_path / "tfds", cache_dir=tmp_path / "cache")
  assert ds.class_names == ("x", "y", "z") and ds.num_classes == 3
  assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (27, 3, 7)
  # tfds shuffles the examples when preparing: compare as sets of (image, label).
  for split, n, seed in (("train_full", _TINY_TRAIN, 0), ("test", _TINY_TEST, 1)):
    x, y = ds.split(split)
    xe, ye = _rand_images(n, seed=seed), np.arange(n) % 3
    for a, b in zip(_sorted_images(x, y), _sorted_images(xe, ye)):
      np.testing.assert_array_equal(a, b)
  # Second load: from the decoded cache, tfds' reader is not used.
  monkeypatch.setattr(tfds, "data_source", lambda *a, **k: pytest.fail("cache not used"))
  ds2 = data.load_dataset(spec, data_dir=tmp_path / "tfds", cache_dir=tmp_path / "cache")
  np.testing.assert_array_equal(ds2.x_train, ds.x_train)
  np.testing.assert_array_equal(ds2.y_test, ds.y_test)


def _closed_port():
  s = socket.socket()
  s.bind(("127.0.0.1", 0))
  port = s.getsockname()[1]
  s.close()  # nothing listens there: connections are refused at once
  return port


@pytest.mark.parametrize("case", ["tfds_unprepared", "no_tfds"])
def test_tfds_offline_error_is_fast(tmp_path, monkeypatch, case):
  # Unprepared in tfds (or no tfds at all) -> the official archive, whose host is refused here.
  import dataclasses
  import sys
  from smoothjax.data import _cifar_download
  arc = _cifar_download.ARCHIVES["cifar10"]
  monkeypatch.setitem(_cifar_download.ARCHIVES, "cifar10", dataclasses.replace(
      arc, url=f"http://127.0.0.1:{_closed_port()}/{arc.filename}"))
  empty = tmp_path / "tfds_empty"
  empty.mkdir()
  if case == "tfds_unprepared":
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare",
                        lambda *a, **k: pytest.fail("must not prepare with TensorFlow"))
    where = str(empty)
  else:
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
    where = "tensorflow-datasets is not installed"
  t0 = time.perf_counter()
  with pytest.raises(DatasetError) as err:
    data.load_dataset("cifar10", data_dir=empty, cache_dir=tmp_path / "cache")
  assert time.perf_counter() - t0 < 10
  msg = str(err.value)
  assert "\n" not in msg
  for part in ("not prepared", where, arc.filename, "npz:PATH", "folder:PATH",
               str(tmp_path / "cache" / "downloads")):
    assert part in msg, (part, msg)
  assert not list((tmp_path / "cache").rglob("*.tar.gz"))


def test_unprepared_cifar_comes_from_the_official_archive(tmp_path, monkeypatch):
  from smoothjax.data import _cifar_download
  want = data.from_arrays(name="cifar10", x_train=np.zeros((20, 32, 32, 3), np.uint8),
                          y_train=np.arange(20) % 10, x_test=np.ones((4, 32, 32, 3), np.uint8),
                          y_test=np.arange(4))
  seen = {}

  def fake(name, *, cache_dir=None, validation_size=None):
    seen.update(name=name, cache_dir=cache_dir)
    return want
  monkeypatch.setattr(_cifar_download, "load_cifar", fake)
  monkeypatch.setitem(__import__("sys").modules, "tensorflow_datasets", None)
  ds = data.load_dataset("cifar10", cache_dir=tmp_path)
  assert ds is want and seen == {"name": "cifar10", "cache_dir": tmp_path}


def test_tfds_unknown_and_unprepared_names(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DatasetError, match="cannot find dataset"):
    data.load_dataset("tfds:no_such_dataset_xyz", data_dir=tmp_path)
  t0 = time.perf_counter()
  with pytest.raises(DatasetError, match="not prepared"):
    data.load_dataset("tfds:mnist", data_dir=tmp_path)
  assert time.perf_counter() - t0 < 10


# ---------------------------------------------------------------------------------------------
# augmentation
# ---------------------------------------------------------------------------------------------


def _crop_candidates(img, pad=4):
  """All (offset, flip) crops of the zero-padded image: shape (2, 2p+1, 2p+1, H, W, C)."""
  h, w, _ = img.shape
  p = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
  crops = np.stack([np.stack([p[i:i + h, j:j + w] for j in range(2 * pad + 1)])
                    for i in range(2 * pad + 1)])
  return np.stack([crops, crops[:, :, :, ::-1]])


def test_to_float():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  f = data.to_float(x)
  assert f.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(f), x.astype(np.float32) / 255)
  assert float(f.min()) == 0.0 and float(f.max()) == 1.0
  with pytest.raises(ValueError, match="uint8"):
    data.to_float(f)


def test_augment_is_a_crop_of_the_padded_image():
  n = 256
  # Distinct positive pixel values: every (offset, flip) gives a different crop.
  x = (np.arange(n * 32 * 32 * 3, dtype=np.float32).reshape(n, 32, 32, 3) + 1) / (n * 3072)
  key = jax.random.key(3)
  out = np.asarray(jax.jit(data.augment)(key, x))
  assert out.shape == x.shape and out.dtype == np.float32
  found = []
  for i in range(n):
    match = np.argwhere((_crop_candidates(x[i]) == out[i]).all(axis=(3, 4, 5)))
    assert len(match) == 1, i
    found.append(match[0])
  found = np.array(found)  # (flip, dy, dx)
  assert 0.4 < found[:, 0].mean() < 0.6  # flips ~ 1/2
  assert set(found[:, 1]) == set(range(9)) and set(found[:, 2]) == set(range(9))
  assert abs(found[:, 1].mean() - 4) < 0.6 and abs(found[:, 2].mean() - 4) < 0.6
  # A zero-padded border appears whenever the offset is not the centre.
  off_centre = (found[:, 1] != 4) | (found[:, 2] != 4)
  assert ((out == 0).any(axis=(1, 2, 3)) == off_centre).all()


def test_augment_keys_and_independence():
  x = data.to_float(_rand_images(16, 12, 12))
  k1, k2 = jax.random.key(0), jax.random.key(1)
  a = np.asarray(data.augment(k1, x))
  np.testing.assert_array_equal(a, np.asarray(data.augment(k1, x)))  # same key, same output
  np.testing.assert_array_equal(a, np.asarray(jax.jit(data.augment)(k1, x)))
  assert not np.array_equal(a, np.asarray(data.augment(k2, x)))
  # Image i's augmentation depends on (key, index[i]) only, not on the rest of the batch.
  np.testing.assert_array_equal(a[:5], np.asarray(data.augment(k1, x[:5])))
  perm = np.random.default_rng(0).permutation(16)
  b = np.asarray(data.augment(k1, x[perm], index=jnp.arange(16)[perm]))
  np.testing.assert_array_equal(b, a[perm])
  # Works on uint8 too, and padding=0 without flips is the identity.
  u = _rand_images(4)
  assert data.augment(k1, u).dtype == jnp.uint8
  np.testing.assert_array_equal(np.asarray(data.augment(k1, u, padding=0, flip=False)), u)
  with pytest.raises(ValueError, match="NHWC"):
    data.augment(k1, u[0])


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------


def _take(it, k):
  return [next(it) for _ in range(k)]


def test_steps_per_epoch():
  assert data.steps_per_epoch(50000, 128) == 390
  assert data.steps_per_epoch(45000, 256) == 175
  assert data.steps_per_epoch(10, 10) == 1 and data.steps_per_epoch(9, 10) == 0
  with pytest.raises(ValueError):
    data.steps_per_epoch(10, 0)


def test_train_batches_epochs_are_permutations():
  n, bs = 103, 10  # 10 steps per epoch, 3 examples dropped per epoch
  x = np.arange(n, dtype=np.int64)[:, None].repeat(4, 1).astype(np.uint8)
  y = np.arange(n)
  key = jax.random.key(7)
  batches = _take(data.train_batches(x, y, batch_size=bs, key=key), 30)
  assert [s for s, _, _ in batches] == list(range(30))
  for s, xb, yb in batches:
    assert xb.shape == (bs, 4) and yb.shape == (bs,)
    np.testing.assert_array_equal(xb[:, 0], yb.astype(np.uint8))  # images follow labels
  epochs = [np.concatenate([yb for _, _, yb in batches[e * 10:(e + 1) * 10]]) for e in range(3)]
  for e, ids in enumerate(epochs):
    assert len(set(ids)) == 100  # no repeats within an epoch
    perm = data.epoch_permutation(key, e, n)
    np.testing.assert_array_equal(np.sort(perm), np.arange(n))
    np.testing.assert_array_equal(ids, perm[:100])
  assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch


def test_train_batches_resume_is_exact():
  n, bs = 57, 8  # 7 steps per epoch
  x = _rand_images(n, 4, 4)
  y = np.arange(n) % 10
  key = jax.random.key(11)
  full = _take(data.train_batches(x, y, batch_size=bs, key=key), 40)
  for k in (0, 1, 6, 7, 8, 20, 33):
    resumed = _take(data.train_batches(x, y, batch_size=bs, key=key, start_step=k), 40 - k)
    for (s1, x1, y1), (s2, x2, y2) in zip(full[k:], resumed):
      assert s1 == s2
      np.testing.assert_array_equal(x1, x2)
      np.testing.assert_array_equal(y1, y2)
  other = _take(data.train_batches(x, y, batch_size=bs, key=jax.random.key(12)), 1)
  assert not np.array_equal(other[0][2], full[0][2])


def test_train_batches_errors():
  x, y = _rand_images(5), np.zeros(5, int)
  with pytest.raises(DatasetError, match="exceeds"):
    data.train_batches(x, y, batch_size=6, key=jax.random.key(0))
  with pytest.raises(ValueError, match="differ in length"):
    data.train_batches(x, y[:4], batch_size=2, key=jax.random.key(0))
  with pytest.raises(ValueError, match="start_step"):
    data.train_batches(x, y, batch_size=2, key=jax.random.key(0), start_step=-1)


# ---------------------------------------------------------------------------------------------
# the real 60k JPEG tar
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_jpeg_tar(tmp_path):
  tar = shared_path("data/cifar10_jpeg75.tar")
  t0 = time.perf_counter()
  ds = data.load_dataset(f"folder:{tar}", cache_dir=tmp_path)
  decode_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  ds = data.load_dataset(f"folder:{tar}", cache_dir=tmp_path)
  cached_s = time.perf_counter() - t0
  print(f"decode {decode_s:.1f} s, cached load {cached_s:.1f} s")
  assert decode_s < 120 and cached_s < decode_s
  assert ds.class_names == data.CIFAR10_CLASSES
  x_full, y_full = ds.split("train_full")
  assert x_full.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
  assert (len(ds.x_train), len(ds.x_val)) == (45000, 5000)
  np.testing.assert_array_equal(np.bincount(y_full), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_val), [500] * 10)  # stratified validation
  # Against the lossless pixels: <split>/<class>/NNNN.jpg is the NNNN-th image of that class in
  # CIFAR's order, and the interleaved order puts it at position 10 * NNNN + class.
  z = shared_path("data/cifar10_lossless_3k.npz")
  with np.load(z) as f:
    pairs = ((f["x_train"], f["y_train"], x_full), (f["x_test"], f["y_test"], ds.x_test))
    for x_ref, y_ref, x_jpeg in pairs:
      rank = np.array([np.sum(y_ref[:i] == y_ref[i]) for i in range(len(y_ref))])
      jpeg = x_jpeg[10 * rank + y_ref].astype(np.float64)
      rmse = np.sqrt(((jpeg - x_ref) ** 2).mean(axis=(1, 2, 3)))
      assert 6 < rmse.mean() < 10 and rmse.max() < 25  # JPEG q75: ~7.6/255 RMSE
