"""ImageNet-style folder source (lazy decoding, resize 256 / crop 224) and 224 px certification."""

import numpy as np
import pytest
from PIL import Image
from tiny_model import TinyLinear

from smoothjax import data
from smoothjax.data import _imagenet as inf
from smoothjax import models


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("imagenet")
  rng = np.random.RandomState(0)
  sizes = {"n01440764": [(300, 260), (256, 256)], "n01443537": [(500, 375), (640, 480)]}
  for wnid, shapes in sizes.items():
    (root / "val" / wnid).mkdir(parents=True)
    for j, (w, h) in enumerate(shapes):
      img = rng.randint(0, 256, (h, w, 3), np.uint8)
      Image.fromarray(img).save(root / "val" / wnid / f"ILSVRC2012_val_{j:08d}.JPEG",
                                quality=95)
  (root / "val" / "n01440764" / "notes.txt").write_text("not an image")
  return root


def test_listing_labels_and_transform(folder):
  src = inf.load_imagenet(f"imagenet_folder:{folder}")
  assert len(src) == 4 and src.num_classes == 2
  assert src.classes == ("n01440764", "n01443537")
  assert src.labels.tolist() == [0, 0, 1, 1]
  x, y = src.load([0, 1, 2, 3])
  assert x.shape == (4, 224, 224, 3) and x.dtype == np.uint8 and y.tolist() == [0, 0, 1, 1]
  # A 256x256 image is not resized: the crop is its centre.
  with Image.open(src.files[1]) as img:
    full = np.asarray(img.convert("RGB"))
  np.testing.assert_array_equal(x[1], full[16:240, 16:240])
  # load_dataset gives the same lazy source.
  via = data.load_dataset(f"imagenet_folder:{folder}")
  assert isinstance(via, data.ImageFolderSource) and via.files == src.files
  # The split folder itself works as the root.
  assert len(inf.ImageFolderSource(folder / "val")) == 4


def test_lazy_batches(folder, monkeypatch):
  src = inf.ImageFolderSource(folder)
  decoded = []
  orig = src._decode
  monkeypatch.setattr(src, "_decode", lambda i: decoded.append(i) or orig(i))
  it = src.batches(3)
  idx, x, _ = next(it)
  assert idx.tolist() == [0, 1, 2] and x.shape[0] == 3 and decoded == [0, 1, 2]
  idx, x, _ = next(it)
  assert idx.tolist() == [3] and decoded == [0, 1, 2, 3]


def test_errors(tmp_path):
  with pytest.raises(inf.DatasetError, match="does not exist"):
    inf.ImageFolderSource(tmp_path / "missing")
  (tmp_path / "val" / "n0").mkdir(parents=True)
  with pytest.raises(inf.DatasetError, match="no images"):
    inf.ImageFolderSource(tmp_path)
  with pytest.raises(inf.DatasetError, match="ImageNet spec"):
    inf.load_imagenet("cifar10")


def test_tfds_imagenet_absent_says_so(tmp_path):
  with pytest.raises(inf.DatasetError, match="imagenet2012"):
    inf.load_imagenet("imagenet", data_dir=tmp_path)


def test_certify_at_224_batches_match_one_run(folder):
  """Certification at 224 px, tiny N on CPU; per-batch results equal one full-batch run."""
  src = inf.ImageFolderSource(folder)
  model = TinyLinear(num_classes=2, hw=224, scale=30.0)  # a 224x224x3 linear classifier
  kw = dict(sigma=0.25, n0=2, num_samples=6, batch_size=12, alpha=0.01)
  res, labels = inf.certify_source(0, model, src, batch_images=3, **kw)
  assert labels.tolist() == [0, 0, 1, 1]
  assert res.counts.shape == (4, 2) and res.counts.sum(-1).tolist() == [6] * 4
  res_one, _ = inf.certify_source(0, model, src, batch_images=4, **kw)
  np.testing.assert_array_equal(res.counts, res_one.counts)
  np.testing.assert_array_equal(res.counts0, res_one.counts0)


@pytest.mark.slow
def test_resnet50_certify_at_224(folder):
  src = inf.ImageFolderSource(folder)
  model = models.build_model("resnet50", num_classes=2, key=0,
                             mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
  res, _ = inf.certify_source(0, model, src, indices=[0, 2], batch_images=2, sigma=0.5, n0=1,
                              num_samples=2, batch_size=4)
  assert res.counts.sum(-1).tolist() == [2, 2]
