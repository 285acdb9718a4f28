"""One function per stage of I2X, each reading and writing one run in a Store.

Layout of a run: docs/ARTIFACTS.md. Every unit writes its artifact under a key fixed by its
inputs and skips work whose artifact exists, so a retry or a resumed job never redoes or
corrupts finished work. `progress(done, total, message, artifact=None)` and `cancel.is_set()`
follow docs/INTERNALS.md. The services wrap these in jobs; i2x.engine.pipeline chains them.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np

from i2x.core.errors import Cancelled, FailedPrecondition, InvalidArgument, NotFound
from i2x.engine.params import ClusterParams, ExplainParams, FinetuneParams, InterpretParams, PrototypeParams
from i2x.storage import Store, run_key, step_name, validate_id  # noqa: F401  (run_key re-exported)
from i2x.storage.staged import StagedStore

Progress = Callable[..., None] | None


# ---------------------------------------------------------------- keys and small helpers

def _key(run_id: str, *parts: str) -> str:
    return run_key(run_id, *parts)


def checkpoint_key(run_id: str, step: int) -> str:
    return _key(run_id, "checkpoints", f"{step_name(step)}.safetensors")


def interpretation_key(run_id: str, step: int) -> str:
    return _key(run_id, "interpretation", f"{step_name(step)}.npz")


def placement_key(run_id: str, step: int) -> str:
    return _key(run_id, "interpretation", "placement", f"{step_name(step)}.json")


def _report(progress: Progress, done: int, total: int, message: str, artifact: str | None = None) -> None:
    if progress is not None:
        progress(done, total, message, artifact)


def _check(cancel) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("cancelled by request")


def require(store: Store, key: str, what: str, stage: str) -> None:
    """FailedPrecondition naming the stage to run first when `key` is not in the store yet."""
    if not store.exists(key):
        raise FailedPrecondition(f"{what} not there yet ({key}): run the {stage} stage first", field="run_id")


# ---------------------------------------------------------------- runs

def _train_config(train: dict):
    """A TrainConfig from a preset name plus overrides ({"preset": "demo", "epochs": 3})."""
    from i2x.core.training import TrainConfig

    settings = {k: v for k, v in dict(train).items() if v is not None}
    return TrainConfig.from_preset(settings.pop("preset", "demo"), **settings)


def create_run(store: Store, run_id: str, *, model: dict, dataset: dict, train: dict | None = None,
               explanation_fraction: float = 0.1, explanation_seed: int = 42, overwrite: bool = False) -> dict:
    """Validate the specs, write run.json and data/explanation.npz. Returns run.json's content.

    model: i2x.models.ModelSpec as a dict; dataset: i2x.data.DatasetSpec as a dict;
    train: i2x.core.training.TrainConfig as a dict (None for a run that brings its own checkpoints).
    An existing run with the same specs is returned as it is; with other specs it is an error
    unless overwrite.
    """
    from i2x.data import DatasetSpec, dataset_stats, explanation_indices, load_dataset
    from i2x.models import ModelSpec, build_model, default_target_layer, resolve_layer

    validate_id(run_id, "run_id")
    if not 0.0 < float(explanation_fraction) <= 1.0:
        raise InvalidArgument(f"must be in (0, 1], got {explanation_fraction}", field="explanation_fraction")
    model_spec = ModelSpec.from_dict(model)
    data_spec = DatasetSpec.from_dict(dataset)
    train_config = _train_config(train) if train is not None else None
    wanted = {
        "model": model_spec.to_dict(),
        "dataset": data_spec.to_dict(),
        "train": train_config.to_dict() if train_config else None,
        "explanation": {"fraction": float(explanation_fraction), "seed": int(explanation_seed)},
    }
    run_json = _key(run_id, "run.json")
    if store.exists(run_json) and not overwrite:
        existing = store.get_json(run_json)
        if all(existing.get(k) == v for k, v in wanted.items() if k != "explanation") and \
                {k: existing["explanation"][k] for k in ("fraction", "seed")} == wanted["explanation"]:
            return existing
        raise FailedPrecondition(
            f"run {run_id!r} exists with other settings; choose another run_id or pass overwrite", field="run_id")

    splits = load_dataset(data_spec)
    n_classes = len(splits.classes)
    if model_spec.num_classes != n_classes:
        raise InvalidArgument(
            f"the model has {model_spec.num_classes} classes but the dataset has {n_classes} "
            f"({', '.join(splits.classes[:12])}); set model.num_classes={n_classes}", field="model.num_classes")
    channels = splits.train.images.shape[-1]
    if model_spec.in_channels != channels:
        raise InvalidArgument(
            f"the model takes {model_spec.in_channels} channels but the images have {channels}; "
            f"set model.in_channels={channels}", field="model.in_channels")
    layer = model_spec.target_layer or default_target_layer(model_spec)
    resolve_layer(build_model(model_spec), layer)  # a wrong layer fails now, not after training
    run_warnings = []
    if train_config is not None:  # a checkpoint count the method cannot use fails now, not after training
        from i2x import config
        from i2x.core.training import check_checkpoint_count

        run_warnings = check_checkpoint_count(len(splits.train.labels), train_config,
                                              int(config.get("I2X_MAX_CHECKPOINTS")))

    indices = explanation_indices(len(splits.train.labels), explanation_fraction, explanation_seed)
    labels = splits.train.labels[indices]
    empty = [splits.classes[c] for c in range(n_classes) if not np.any(labels == c)]
    if empty:
        raise InvalidArgument(
            f"classes {empty} have no sample in the explanation set ({len(indices)} samples); "
            "raise explanation_fraction or use more data", field="explanation_fraction")
    mean, std = dataset_stats(data_spec)
    store.put_npz(_key(run_id, "data", "explanation.npz"), indices=indices.astype(np.int64),
                  labels=labels.astype(np.int64), images=splits.train.images[indices])
    record = {
        "run_id": run_id,
        "created": time.time(),
        "i2x_version": __import__("i2x.client._version", fromlist=["_"]).__version__,  # the I2X that made it
        **wanted,
        "classes": list(splits.classes),
        "target_layer": layer,
        "mean": [float(x) for x in np.atleast_1d(mean)],
        "std": [float(x) for x in np.atleast_1d(std)],
        "sizes": {"train": int(len(splits.train.labels)), "test": int(len(splits.test.labels)),
                  "explanation": int(len(indices))},
        "warnings": run_warnings,
    }
    record["explanation"]["size"] = int(len(indices))
    store.put_json(run_json, record)
    return record


def get_run(store: Store, run_id: str) -> dict:
    """run.json of the run, with its checkpoint list; NotFound(field="run_id") when absent."""
    validate_id(run_id, "run_id")
    key = _key(run_id, "run.json")
    if not store.exists(key):
        raise NotFound(f"no run {run_id!r} in {store.url}", field="run_id")
    record = store.get_json(key)
    index = _key(run_id, "checkpoints", "index.json")
    listing = store.get_json(index) if store.exists(index) else {"checkpoints": []}
    record["checkpoints"] = listing["checkpoints"]
    record["live"] = bool(listing.get("live"))  # checkpoints still being registered (register_live_checkpoints)
    return record


def list_runs(store: Store) -> list[str]:
    return sorted({key.split("/")[1] for key in store.list("runs/") if key.endswith("/run.json")})


def list_checkpoints(store: Store, run_id: str) -> list[dict]:
    index = _key(run_id, "checkpoints", "index.json")
    get_run(store, run_id)
    require(store, index, "the checkpoint index", "training (or register)")
    return store.get_json(index)["checkpoints"]


class _RunContext:
    """What the torch stages need about a run, built once per process and reused (cache).

    One model serves every checkpoint of the run: `checkpoint(...)` loads a checkpoint's weights
    and holds the context's lock while the caller uses them, so concurrent jobs sharing a cache
    (two jobs of one service on the same run) never see each other's weights.
    """

    def __init__(self, store: Store, run_id: str):
        from i2x.models import ModelSpec, build_model

        self.lock = threading.Lock()
        self.record = get_run(store, run_id)
        self.model_spec = ModelSpec.from_dict(self.record["model"])
        self.classes = self.record["classes"]
        self.mean, self.std = self.record["mean"], self.record["std"]
        self.model = build_model(self.model_spec)
        self.model.eval()
        data = store.get_npz(_key(run_id, "data", "explanation.npz"))
        self.labels = data["labels"]
        self.images_uint8 = data["images"]
        self.images = self.tensor(self.images_uint8)
        self._pinned = None

    def images_for(self, device):
        """The explanation images for a unit on `device`: page-locked once per run on CUDA, so every
        checkpoint's batches are copied host -> device without staging (non_blocking)."""
        if getattr(device, "type", "cpu") != "cuda":
            return self.images
        if self._pinned is None:
            self._pinned = self.images.pin_memory()
        return self._pinned

    def tensor(self, images: np.ndarray):
        """uint8 NHWC -> normalized NCHW at the model's input size; done once per run."""
        import torch.nn.functional as F

        from i2x.data import to_tensor

        x = to_tensor(images, self.mean, self.std)
        size = self.model_spec.input_size
        if size and x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return x

    @contextmanager
    def checkpoint(self, store: Store, run_id: str, step: int, device=None):
        """The run's model with the weights of `step`, exclusively for the `with` block; with `device`,
        the model is moved there and the weights are loaded onto it."""
        from i2x.models import checkpoint_from_bytes, load_weights

        state, _ = checkpoint_from_bytes(store.get_bytes(checkpoint_key(run_id, step)), device=device)
        with self.lock:
            if device is not None:
                self.model.to(device)
            load_weights(self.model, state)
            self.model.eval()
            yield self.model


_CACHE_LOCK = threading.Lock()
_CACHED_RUNS = 3  # a cache keeps the decoded images and model of this many runs


def _context(store: Store, run_id: str, cache: dict | None) -> _RunContext:
    if cache is None:
        return _RunContext(store, run_id)
    key = (store.url, run_id)
    with _CACHE_LOCK:
        ctx = cache.get(key)
    if ctx is None:
        ctx = _RunContext(store, run_id)  # built outside the lock: decoding takes a while
        with _CACHE_LOCK:
            ctx = cache.setdefault(key, ctx)
            while len(cache) > _CACHED_RUNS:
                cache.pop(next(k for k in cache if k != key))  # the oldest other run goes
    return ctx


def _evaluate_final(store: Store, run_id: str, model, record: dict, test=None) -> dict:
    """evaluation/final.npz on the test split (`test`: the split already loaded, else loaded here)."""
    from i2x.data import DatasetSpec, load_dataset

    if test is None:
        test = load_dataset(DatasetSpec.from_dict(record["dataset"])).test
    result = _evaluate_resized(model, test, record)
    _put_evaluation(store, _key(run_id, "evaluation", "final.npz"), result, test.labels)
    return {"accuracy": float(result["accuracy"])}


def _put_evaluation(store: Store, key: str, result: dict, labels: np.ndarray) -> None:
    """evaluation/*.npz: confusion (K, K), predictions and labels (N_test,), all int64."""
    store.put_npz(key, confusion=result["confusion"].astype(np.int64),
                  predictions=np.asarray(result["predictions"], dtype=np.int64), labels=labels.astype(np.int64))


def _evaluate_resized(model, data, record: dict) -> dict:
    """evaluate() on images brought to the model's input size."""
    from i2x.core.training import evaluate

    data = _resized_dataset(data, record)
    return evaluate(model, data, mean=record["mean"], std=record["std"])


def _resized_dataset(data, record: dict):
    """Resize a dataset's images to the model's input size when they differ (e.g. MNIST for resnet50)."""
    size = record["model"].get("input_size")
    if not size or data.images.shape[1] == size:
        return data
    import torch
    import torch.nn.functional as F

    from i2x.data import ArrayDataset

    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return ArrayDataset(images=images, labels=data.labels, classes=data.classes)


def train_run(store: Store, run_id: str, *, progress: Progress = None, cancel=None) -> dict:
    """Train per run.json, writing checkpoints/<step>.safetensors as they come, then
    evaluation/final.npz and checkpoints/index.json (last). Returns {"checkpoints": [...], "accuracy": ...}."""
    from i2x.core.training import Checkpoint, TrainConfig, seeded_build, train
    from i2x.data import DatasetSpec, load_dataset
    from i2x.models import ModelSpec, build_model, checkpoint_to_bytes

    record = get_run(store, run_id)
    index_key = _key(run_id, "checkpoints", "index.json")
    if store.exists(index_key):  # finished before: nothing to redo
        return store.get_json(index_key)
    if record.get("train") is None:
        raise FailedPrecondition(f"run {run_id!r} was created without a train config; register checkpoints instead",
                                 field="train")
    config = TrainConfig.from_dict(record["train"])
    splits = load_dataset(DatasetSpec.from_dict(record["dataset"]))
    train_set = _resized_dataset(splits.train, record)
    spec = ModelSpec.from_dict(record["model"])
    model = seeded_build(lambda: build_model(spec), config.seed)  # the seed fixes the initial weights too
    saved: list[dict] = []

    def on_checkpoint(ckpt: Checkpoint) -> None:
        meta = {"step": ckpt.step, "epoch": ckpt.epoch, "seed": config.seed, "loss": ckpt.loss,
                "accuracy": ckpt.accuracy, "arch": record["model"]["arch"]}
        key = checkpoint_key(run_id, ckpt.step)
        store.put_bytes(key, checkpoint_to_bytes(ckpt.state_dict, meta))
        saved.append({**meta, "key": key})

    train(model, train_set, config, mean=record["mean"], std=record["std"], on_checkpoint=on_checkpoint,
          progress=progress, cancel=cancel)
    summary = _evaluate_final(store, run_id, model, record, splits.test)  # decoded once for both
    index = {"checkpoints": saved, **summary}
    store.put_json(index_key, index)
    return index


# What a run's checkpoints produce: removed when its checkpoints are replaced (register overwrite).
DERIVED_PREFIXES = ("checkpoints/", "evaluation/", "interpretation/", "clustering/", "explanation/", "curation/",
                    "finetune/", "figures/", "report.html")


def derived_results(store: Store, run_id: str) -> list[str]:
    """The keys of the run that hang on its checkpoints (the checkpoints included), sorted."""
    base = _key(run_id) + "/"
    return [key for key in store.list(base) if key[len(base):].startswith(DERIVED_PREFIXES)]


def register_checkpoints(store: Store, run_id: str, checkpoints: Iterable[tuple[int, bytes | str]], *,
                         overwrite: bool = True) -> dict:
    """Bring your own run: (step, safetensors bytes or an existing key in the store) pairs.

    Each is loaded into the run's model to check its architecture, then stored under the run.
    Writes evaluation/final.npz (the last checkpoint on the test split) and checkpoints/index.json.
    A run that has checkpoints or derived results already: overwrite=False refuses it,
    overwrite=True removes all of them (derived_results) once the new checkpoints checked out,
    so no later stage runs on results of the old checkpoints.
    """
    from i2x.models import build_model, checkpoint_to_bytes, load_weights, ModelSpec

    record = get_run(store, run_id)
    model = build_model(ModelSpec.from_dict(record["model"]))
    items = sorted(((int(step), source) for step, source in checkpoints), key=lambda item: item[0])
    if not items:
        raise InvalidArgument("give at least one checkpoint", field="checkpoints")
    steps = [step for step, _ in items]
    if len(set(steps)) != len(steps) or min(steps) < 0:
        raise InvalidArgument(f"steps must be distinct and >= 0, got {steps}", field="checkpoints.step")
    # Pass 1 checks every checkpoint (readable, this architecture, finite weights) and evaluates
    # the last one, writing nothing; pass 2 stores them. A bad checkpoint leaves no file behind.
    staged = StagedStore(store)
    for step, source in items:
        state, meta = _read_checkpoint(store, step, source)
        load_weights(model, state)
    summary = _evaluate_final(staged, run_id, model, record)
    old = derived_results(store, run_id)
    if old and not overwrite:
        raise FailedPrecondition(f"run {run_id!r} already has checkpoints or results derived from them; pass "
                                 "overwrite to replace them", field="overwrite")
    sources = {source for _, source in items if isinstance(source, str)}
    for key in old:  # the sources may lie under checkpoints/ themselves: those stay until read
        if key not in sources:
            store.delete(key)
    saved, written = [], []
    try:
        for step, source in items:
            state, meta = _read_checkpoint(store, step, source)
            meta = {**meta, "step": step, "arch": record["model"]["arch"]}
            key = checkpoint_key(run_id, step)
            if not store.exists(key):
                written.append(key)
            store.put_bytes(key, checkpoint_to_bytes(state, meta))
            saved.append({"step": step, "epoch": meta.get("epoch"), "loss": meta.get("loss"),
                          "accuracy": meta.get("accuracy"), "key": key})
        index = {"checkpoints": saved, **summary}
        staged.put_json(_key(run_id, "checkpoints", "index.json"), index)
        staged.commit()
    except BaseException:
        for key in written:  # best effort: what this try added goes again
            try:
                store.delete(key)
            except Exception:  # noqa: BLE001  (the store is down: the next try overwrites them)
                pass
        raise
    return index


def _read_checkpoint(store: Store, step: int, source: bytes | str) -> tuple[dict, dict]:
    """Tensors and metadata of one checkpoint to register; InvalidArgument when unreadable or not finite."""
    import torch

    from i2x.models import checkpoint_from_bytes

    data = store.get_bytes(source) if isinstance(source, str) else bytes(source)
    try:
        state, meta = checkpoint_from_bytes(data)
    except InvalidArgument:
        raise
    except Exception as exc:  # noqa: BLE001  # neither safetensors nor a torch.save zip
        raise InvalidArgument(f"checkpoint of step {step} could not be read ({str(exc)[:200]}); give "
                              "model.state_dict() saved with safetensors or torch.save", field="checkpoints") from None
    bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise InvalidArgument(f"checkpoint of step {step} has NaN or infinite weights in {len(bad)} tensors "
                              f"(e.g. {bad[:3]}); register a checkpoint from before training diverged",
                              field="checkpoints")
    return state, meta


# ---------------------------------------------------------------- interpretation (Eq. 1)

def _target_args(params: InterpretParams, labels: np.ndarray, n_classes: int):
    target = params.target
    if target in ("predicted", "label"):
        return target
    try:
        value = int(target)
    except (TypeError, ValueError):
        raise InvalidArgument(f"{target!r} is not 'predicted', 'label' or a class index", field="target") from None
    if not 0 <= value < n_classes:
        raise InvalidArgument(f"class {value} is out of range 0..{n_classes - 1}", field="target")
    return value


def _interpretation_params(store: Store, run_id: str, params: InterpretParams, layer: str) -> None:
    """Units of one run share one set of parameters: refuse to mix layers or targets.

    The layer is checked against the run's model before params.json is written, and
    params.json that no unit was written with yet (a try that failed before its first unit)
    is replaced: a bad try never blocks a good one."""
    key = _key(run_id, "interpretation", "params.json")
    wanted = {**params.to_dict(), "target_layer": layer}
    for where in ("batch_size", "device"):  # where and how fast, not what: units may differ in these
        wanted.pop(where, None)
    check_layer(get_run(store, run_id)["model"], layer)
    if store.exists(key):
        existing = {"precision": "fp32", **store.get_json(key)}  # runs from before precision existed
        if existing != wanted and not _interpretation_started(store, run_id):
            store.put_json(key, wanted)
        elif existing != wanted:
            raise FailedPrecondition(
                f"run {run_id!r} was interpreted with {existing}; interpret into a new run "
                f"(register the same checkpoints) to use {wanted}", field="target_layer")
    else:
        store.put_json(key, wanted)


def check_layer(model: dict, layer: str, field: str = "target_layer") -> None:
    """InvalidArgument(field) unless `layer` names a module of the model spec `model`."""
    from i2x.models import ModelSpec, build_model, resolve_layer

    try:
        resolve_layer(build_model(ModelSpec.from_dict(model)), layer)
    except InvalidArgument as error:
        if error.field != "target_layer":
            raise
        raise InvalidArgument(error.message, field=field) from None


def _interpretation_started(store: Store, run_id: str) -> bool:
    """True when a unit or the index of the run's interpretation exists (params.json binds them)."""
    prefix = _key(run_id, "interpretation") + "/"
    return any(not k.endswith("/params.json") for k in store.list(prefix))


def interpret_checkpoint(store: Store, run_id: str, step: int, params: InterpretParams,
                         cache: dict | None = None) -> str:
    """One unit: saliency, confidences and predictions of one checkpoint on the explanation set.

    Writes interpretation/<step>.npz unless it exists; returns its key. `cache` (a dict the
    caller keeps) holds the decoded images and the built model between calls, so a worker
    decodes the images once per run, not once per checkpoint. params.device is resolved on this
    node (in a Ray actor granted a GPU, cuda is that GPU); where the unit ran goes to
    interpretation/placement/<step>.json first, the .npz (the unit's completion mark) last.
    """
    from i2x.core.device import resolve_device
    from i2x.core.saliency import GradCAM
    from i2x.engine.placement import placement_record, start_unit

    key = interpretation_key(run_id, step)
    if store.exists(key):
        return key
    started = time.perf_counter()
    device = resolve_device(params.device, field="params.device")
    start_unit(device)
    ctx = _context(store, run_id, cache)
    layer = params.target_layer or ctx.record["target_layer"]
    with ctx.checkpoint(store, run_id, step, device=device) as model:
        cam = GradCAM(model, layer, batch_size=params.batch_size, device=device, precision=params.precision)
        result = cam(ctx.images_for(device), _target_args(params, ctx.labels, len(ctx.classes)), labels=ctx.labels)
    store.put_json(placement_key(run_id, step), placement_record(step, device, time.perf_counter() - started))
    store.put_npz(key, saliency=result.saliency.astype(np.float16),
                  confidences=result.confidences.astype(np.float32),
                  predictions=result.predictions.astype(np.int16))
    return key


def interpret_run(store: Store, run_id: str, params: InterpretParams, *, progress: Progress = None, cancel=None,
                  map_units: Callable[[list[int]], Iterable[str]] | None = None,
                  steps: list[int] | None = None) -> dict:
    """All checkpoints, or the listed `steps` (at least 2) of them. map_units(steps) runs
    interpret_checkpoint for each step and yields the keys as units finish (the interpretation
    service passes a Ray fan-out); default: in-process. Writes interpretation/index.json last;
    returns it. The later stages use exactly the checkpoints the index lists."""
    checkpoints = list_checkpoints(store, run_id)
    record = get_run(store, run_id)
    layer = params.target_layer or record["target_layer"]
    if params.batch_size < 0 or params.batch_size > 4096:
        raise InvalidArgument(f"must be in 1..4096, or 0 to size it to the device's memory, got "
                              f"{params.batch_size}", field="batch_size")
    from i2x.core.device import check_device, check_precision

    params.device = check_device(params.device, field="device")
    params.precision = check_precision(params.precision, field="precision")
    _target_args(params, np.zeros(0), len(record["classes"]))
    _interpretation_params(store, run_id, params, layer)
    index_key = _key(run_id, "interpretation", "index.json")
    available = [int(c["step"]) for c in checkpoints]
    if steps:
        unknown = sorted(set(int(s) for s in steps) - set(available))
        if unknown:
            raise NotFound(f"steps {unknown} are not checkpoints of run {run_id!r} (it has {available})",
                           field="steps")
        steps = sorted(set(int(s) for s in steps))
        if len(steps) < 2:
            raise InvalidArgument("give at least 2 steps: confidence changes need consecutive checkpoints",
                                  field="steps")
    else:
        steps = available
    if store.exists(index_key):
        index = store.get_json(index_key)
        if index["steps"] != steps:
            raise FailedPrecondition(f"run {run_id!r} was interpreted at steps {index['steps']}; interpret a new "
                                     "run (register the same checkpoints) for other steps", field="steps")
        return index
    if map_units is None:
        cache: dict = {}

        def map_units(todo: list[int]) -> Iterable[str]:
            for step in todo:
                _check(cancel)
                yield interpret_checkpoint(store, run_id, step, params, cache)

    done = 0
    _report(progress, 0, len(steps), "interpreting checkpoints")
    for key in map_units(steps):
        done += 1
        _report(progress, done, len(steps), f"interpreted {key.rsplit('/', 1)[-1]}", key)
        _check(cancel)
    first = store.get_npz(interpretation_key(run_id, steps[0]))
    index = {"target_layer": layer, "target": params.target, "steps": steps,
             "saliency_shape": list(first["saliency"].shape), "num_classes": int(first["confidences"].shape[1]),
             "units": [interpretation_key(run_id, s) for s in steps]}
    placement = _placement(store, run_id, steps)
    if placement:
        index["placement"] = placement
    store.put_json(index_key, index)
    return index


def _placement(store: Store, run_id: str, steps: list[int]) -> list[dict]:
    """Where each unit ran (interpretation/placement/*.json), in step order; units written before
    placement was recorded have none."""
    keys = [placement_key(run_id, s) for s in steps]
    return [store.get_json(k) for k in keys if store.exists(k)]


def load_interpretation(store: Store, run_id: str) -> dict[str, np.ndarray]:
    """Stack the per-checkpoint units: saliency (T,N,h,w) float32, confidences (T,N,K), predictions (T,N), steps (T,)."""
    index_key = _key(run_id, "interpretation", "index.json")
    require(store, index_key, "the interpretation", "interpretation")
    index = store.get_json(index_key)
    units = [store.get_npz(key) for key in index["units"]]
    return {
        "saliency": np.stack([u["saliency"] for u in units]).astype(np.float32),
        "confidences": np.stack([u["confidences"] for u in units]).astype(np.float32),
        "predictions": np.stack([u["predictions"] for u in units]).astype(np.int64),
        "steps": np.asarray(index["steps"], dtype=np.int64),
    }


# ---------------------------------------------------------------- clustering (Eq. 3, Eq. 5)

def extract_prototypes(store: Store, run_id: str, params: PrototypeParams, *, progress: Progress = None,
                       cancel=None, cache: dict | None = None) -> dict:
    """Eq. 3 on the final checkpoint's features: clustering/prototypes.npz. Returns a summary."""
    from i2x.core.device import resolve_device
    from i2x.core.prototypes import PrototypeExtractor
    from i2x.core.saliency import GradCAM

    key = _key(run_id, "clustering", "prototypes.npz")
    params_key = _key(run_id, "clustering", "prototypes.json")
    if store.exists(key) and store.exists(params_key) and store.get_json(params_key)["params"] == params.to_dict():
        return store.get_json(params_key)
    checkpoints = list_checkpoints(store, run_id)
    extractor = PrototypeExtractor(n_prototypes=params.n_prototypes, n_components=params.n_components,
                                   max_fit_vectors=params.max_fit_vectors, random_state=params.random_state)
    ctx = _context(store, run_id, cache)
    interp_params = _key(run_id, "interpretation", "params.json")
    layer = store.get_json(interp_params)["target_layer"] if store.exists(interp_params) else ctx.record["target_layer"]
    final_step = int(checkpoints[-1]["step"])
    _report(progress, 0, 2, f"features of the final checkpoint (step {final_step}) at {layer}")
    device = resolve_device("auto")  # the features pass is one Grad-CAM forward: on the GPU when there is one
    with ctx.checkpoint(store, run_id, final_step, device=device) as model:
        features = GradCAM(model, layer, device=device)(ctx.images_for(device), "predicted",
                                                        return_features=True).features
    _check(cancel)
    _report(progress, 1, 2, f"PCA + KMeans into {params.n_prototypes} prototypes")
    assignments = extractor.fit_transform(features)
    staged = StagedStore(store)  # the .npz and its summary together, or neither
    staged.put_npz(key, assignments=assignments.astype(np.int16),
                  centroids=extractor.centroids_.astype(np.float32),
                  pca_components=extractor.pca_.components_.astype(np.float32),
                  pca_mean=extractor.pca_.mean_.astype(np.float32))
    counts = np.bincount(assignments.ravel(), minlength=params.n_prototypes)
    summary = {"params": params.to_dict(), "step": final_step, "target_layer": layer,
               "feature_shape": list(features.shape), "positions_per_prototype": counts.tolist(), "key": key}
    staged.put_json(params_key, summary)
    staged.commit()
    _report(progress, 2, 2, "prototypes written", key)
    return summary


def cluster_confidences(store: Store, run_id: str, params: ClusterParams, *, progress: Progress = None,
                        cancel=None) -> dict:
    """Eq. 5: HDBSCAN of the confidence changes per step: clustering/confidence_clusters.npz."""
    from i2x.core.dynamics import ConfidenceClusterer, confidence_changes

    key = _key(run_id, "clustering", "confidence_clusters.npz")
    interp = load_interpretation(store, run_id)
    steps = interp["steps"]
    if len(steps) < 2:
        raise FailedPrecondition(f"confidence changes need at least 2 checkpoints, the run has {len(steps)}",
                                 field="run_id")
    dp = confidence_changes(interp["confidences"])
    clusterer = ConfidenceClusterer(min_cluster_size=params.min_cluster_size, min_samples=params.min_samples,
                                    cluster_selection_epsilon=params.cluster_selection_epsilon)
    labels = np.empty(dp.shape[:2], dtype=np.int32)
    for t in range(dp.shape[0]):
        _check(cancel)
        labels[t] = clusterer.fit_predict(dp[t])
        _report(progress, t + 1, dp.shape[0], f"HDBSCAN at step {int(steps[t])}")
    staged = StagedStore(store)  # the .npz and its summary together, or neither
    staged.put_npz(key, labels=labels, steps=steps[:-1])
    n_clusters = [int(len(set(row.tolist()) - {-1})) for row in labels]
    summary = {"params": params.to_dict(), "n_clusters": n_clusters,
               "noise_fraction": float(np.mean(labels == -1)), "key": key}
    staged.put_json(_key(run_id, "clustering", "confidence_clusters.json"), summary)
    staged.commit()
    return summary


# ---------------------------------------------------------------- explanation (Eq. 4, 6-8, 2.6, 3.3-3.4)

def explain_run(store: Store, run_id: str, params: ExplainParams, *, progress: Progress = None,
                cancel=None) -> dict:
    """Eq. 4, 6-8 and the structured explanation: explanation/{intensity,mapping}.npz and
    explanation/explanation.json (returned)."""
    from i2x.core.dynamics import fit_dynamics
    from i2x.core.explain import build_explanation
    from i2x.core.intensity import prototype_intensity

    record = get_run(store, run_id)
    require(store, _key(run_id, "clustering", "prototypes.npz"), "the prototypes", "prototype (clustering)")
    require(store, _key(run_id, "clustering", "confidence_clusters.npz"), "the confidence clusters",
             "confidence clustering")
    if params.curation_scope not in ("all", "pair"):
        raise InvalidArgument(f"must be 'all' or 'pair', got {params.curation_scope!r}", field="curation_scope")
    interp = load_interpretation(store, run_id)
    prototypes = store.get_npz(_key(run_id, "clustering", "prototypes.npz"))
    clusters = store.get_npz(_key(run_id, "clustering", "confidence_clusters.npz"))
    assignments = prototypes["assignments"].astype(np.int64)
    n_prototypes = int(prototypes["centroids"].shape[0])
    labels = store.get_npz(_key(run_id, "data", "explanation.npz"))["labels"]
    confusion = store.get_npz(_key(run_id, "evaluation", "final.npz"))["confusion"]
    if assignments.shape != interp["saliency"].shape[1:]:
        raise FailedPrecondition(
            f"prototype maps {assignments.shape} do not match the saliency maps {interp['saliency'].shape[1:]}: "
            "extract prototypes at the interpreted layer", field="target_layer")

    # Commit or nothing: a try that fails (e.g. in build_explanation) leaves the last good
    # intensity, mapping and explanation as they were.
    staged = StagedStore(store)
    _report(progress, 0, 3, "prototype intensity (Eq. 4)")
    intensity = prototype_intensity(interp["saliency"], assignments, n_prototypes)
    staged.put_npz(_key(run_id, "explanation", "intensity.npz"), intensity=intensity.astype(np.float32),
                  steps=interp["steps"])
    _check(cancel)
    _report(progress, 1, 3, "cluster aggregates and ridge mapping (Eq. 6-8)")
    dyn = fit_dynamics(interp["confidences"], intensity, interp["steps"], tau=params.tau, lam=params.lam,
                       labels=clusters["labels"])
    staged.put_npz(_key(run_id, "explanation", "mapping.npz"), W=dyn.W.astype(np.float32),
                  dP=np.asarray(dyn.dP, dtype=np.float32), dI=np.asarray(dyn.dI, dtype=np.float32),
                  cluster_step=np.asarray(dyn.cluster_step, dtype=np.int64),
                  cluster_label=np.asarray(dyn.cluster_label, dtype=np.int32),
                  steps=np.asarray(dyn.steps, dtype=np.int64))
    _check(cancel)
    _report(progress, 2, 3, "structured explanation")
    explanation = build_explanation(
        classes=record["classes"], assignments=assignments, labels=labels, confidences=interp["confidences"],
        W=dyn.W, steps=interp["steps"], confusion=confusion, n_prototypes=n_prototypes,
        pair=tuple(params.pair) if params.pair else None, curation_scope=params.curation_scope,
        tau=params.tau, lam=params.lam, lam_relative=True, cluster_labels=clusters["labels"], **params.extra)
    explanation["run_id"] = run_id
    key = _key(run_id, "explanation", "explanation.json")
    staged.put_json(key, explanation)
    _check(cancel)
    staged.commit()  # explanation.json last
    _report(progress, 3, 3, "explanation written", key)
    return explanation


def get_explanation(store: Store, run_id: str) -> dict:
    key = _key(run_id, "explanation", "explanation.json")
    get_run(store, run_id)
    require(store, key, "the explanation", "explanation")
    return store.get_json(key)


def evaluate_checkpoint(store: Store, run_id: str, step: int | None = None, *, cache: dict | None = None) -> dict:
    """Accuracy and confusion matrix of one checkpoint (default: the last) on the test split.

    Writes evaluation/<step>.npz (confusion, predictions, labels) unless it exists; returns
    {"step", "accuracy", "confusion" (K x K list), "key"}."""
    from i2x.data import DatasetSpec, load_dataset

    checkpoints = list_checkpoints(store, run_id)
    available = [int(c["step"]) for c in checkpoints]
    step = available[-1] if step is None else int(step)
    if step not in available:
        raise NotFound(f"run {run_id!r} has no checkpoint at step {step} (it has {available})", field="step")
    key = _key(run_id, "evaluation", f"{step_name(step)}.npz")
    if not store.exists(key):
        ctx = _context(store, run_id, cache)
        test = load_dataset(DatasetSpec.from_dict(ctx.record["dataset"])).test
        with ctx.checkpoint(store, run_id, step) as model:
            result = _evaluate_resized(model, test, ctx.record)
        _put_evaluation(store, key, result, test.labels)
    data = store.get_npz(key)
    confusion = data["confusion"]
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    return {"step": step, "accuracy": accuracy, "confusion": confusion.tolist(), "key": key}


def analyze_pair(store: Store, run_id: str, pair: list[int] | tuple[int, int], **params) -> dict:
    """Reliable and uncertain prototypes of any pair of classes (paper 3.3), from the stored
    prototypes and mapping; the explanation holds only its most confused pair's analysis.
    params: those of i2x.core.explain.pair_analysis (min_presence_fraction, ...)."""
    from i2x.core.explain import pair_analysis, pair_context, presence, withhold_near_chance

    record = get_run(store, run_id)
    require(store, _key(run_id, "explanation", "mapping.npz"), "the mapping W_t", "explanation")
    if len(pair) != 2:
        raise InvalidArgument(f"give two class indices, got {list(pair)}", field="pair")
    prototypes = store.get_npz(_key(run_id, "clustering", "prototypes.npz"))
    mapping = store.get_npz(_key(run_id, "explanation", "mapping.npz"))
    labels = store.get_npz(_key(run_id, "data", "explanation.npz"))["labels"]
    n_prototypes = int(prototypes["centroids"].shape[0])
    present = presence(prototypes["assignments"].astype(np.int64), n_prototypes)
    explanation_key = _key(run_id, "explanation", "explanation.json")
    explanation = store.get_json(explanation_key) if store.exists(explanation_key) else None
    analysis = pair_analysis(int(pair[0]), int(pair[1]), presence=present, labels=labels, W=mapping["W"],
                             steps=mapping["steps"], class_names=record["classes"],
                             **{**pair_context(explanation), **params})  # the explanation's own rules
    return withhold_near_chance(analysis, explanation)


def curate_run(store: Store, run_id: str, *, prototype: int | None = None, scope: str = "all",
               pair: list[int] | None = None) -> dict:
    """The curated set: explanation-set indices without `prototype` (default: the explanation's
    uncertain prototype), for the explanation's analysed pair, under the explanation's cap on the
    removed share of any class (docs/METHOD.md). Writes curation/curated.npz; returns sizes and the key."""
    from i2x.core.explain import curation_summary, presence, prototype_area

    explanation = get_explanation(store, run_id)
    if scope not in ("all", "pair"):
        raise InvalidArgument(f"must be 'all' or 'pair', got {scope!r}", field="scope")
    analysed = explanation.get("analysed_pair") or explanation["most_confused_pair"]
    pair = list(pair) if pair else [analysed["a"], analysed["b"]]
    if prototype is None:
        prototype = explanation["uncertain_prototype"]
        if prototype is None:
            raise FailedPrecondition("the explanation found no uncertain prototype; name one to curate with",
                                     field="prototype")
    prototypes = store.get_npz(_key(run_id, "clustering", "prototypes.npz"))
    n_prototypes = int(prototypes["centroids"].shape[0])
    if not 0 <= int(prototype) < n_prototypes:
        raise InvalidArgument(f"prototype {prototype} is out of range 0..{n_prototypes - 1}", field="prototype")
    data = store.get_npz(_key(run_id, "data", "explanation.npz"))
    assignments = prototypes["assignments"].astype(np.int64)
    present = presence(assignments, n_prototypes)
    classes = get_run(store, run_id)["classes"]
    cap = float((explanation.get("parameters") or {}).get("max_removed_fraction", 1.0))
    summary = curation_summary(present, data["labels"], int(prototype), scope, tuple(pair), n_classes=len(classes),
                               max_removed_fraction=cap, area=prototype_area(assignments, int(prototype)),
                               class_names=classes)
    removed = np.asarray(summary["removed_indices"], dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(data["labels"])), removed).astype(np.int64)
    key = _key(run_id, "curation", "curated.npz")
    store.put_npz(key, indices=kept, train_indices=data["indices"][kept].astype(np.int64),
                  prototype=np.int64(prototype), pair=np.asarray(pair, dtype=np.int64),
                  removed_fraction_per_class=np.asarray(summary["removed_fraction_per_class"], dtype=np.float64))
    return {"key": key, "prototype": int(prototype), "scope": scope, "pair": pair,
            "size_before": summary["size_before"], "size_after": summary["size_after"],
            "removed_per_class": summary["removed_per_class"],
            "removed_fraction_per_class": summary["removed_fraction_per_class"],
            "limited": summary["limited"], "cap": summary["cap"], "message": summary["message"]}


def finetune_run(store: Store, run_id: str, params: FinetuneParams, *, progress: Progress = None,
                 cancel=None, map_runs=None) -> dict:
    """Paper Table 1 from the final checkpoint: finetune/table.json and table.md. Returns the table.
    map_runs: how the (protocol, repeat) units run (i2x.core.finetune.run_protocols; the training
    service passes a Ray fan-out); default: here, one after the other."""
    from i2x.core.finetune import PROTOCOLS, add_statistics, removed_fraction_per_class, run_protocols, table_markdown
    from i2x.data import ArrayDataset, DatasetSpec, load_dataset
    from i2x.models import ModelSpec, build_model, checkpoint_from_bytes

    record = get_run(store, run_id)
    unknown = [p for p in params.protocols if p not in PROTOCOLS]
    if unknown or not params.protocols:
        raise InvalidArgument(f"unknown protocols {unknown}; choose from {list(PROTOCOLS)}", field="protocols")
    if not 1 <= params.repeats <= 100:
        raise InvalidArgument(f"must be in 1..100, got {params.repeats}", field="repeats")
    curated_key = _key(run_id, "curation", "curated.npz")
    if not store.exists(curated_key):
        curate_run(store, run_id)
    curated = store.get_npz(curated_key)
    data = store.get_npz(_key(run_id, "data", "explanation.npz"))
    classes = record["classes"]
    full = _resized_dataset(ArrayDataset(images=data["images"], labels=data["labels"], classes=classes), record)
    kept = curated["indices"]
    curated_set = ArrayDataset(images=full.images[kept], labels=full.labels[kept], classes=classes)
    test = _resized_dataset(load_dataset(DatasetSpec.from_dict(record["dataset"])).test, record)
    final_step = list_checkpoints(store, run_id)[-1]["step"]
    state, _ = checkpoint_from_bytes(store.get_bytes(checkpoint_key(run_id, final_step)))
    spec = ModelSpec.from_dict(record["model"])
    pair = tuple(int(c) for c in curated["pair"])
    kwargs = {k: v for k, v in (("lr", params.lr), ("batch_size", params.batch_size)) if v is not None}
    device = params.device or (record.get("train") or {}).get("device") or "auto"
    table = run_protocols(lambda: build_model(spec), state, full, curated_set, test, pair,
                          mean=record["mean"], std=record["std"], protocols=tuple(params.protocols),
                          repeats=params.repeats, seed=params.seed, progress=progress, cancel=cancel,
                          device=device, map_runs=map_runs, **kwargs)
    table["prototype"] = int(curated["prototype"])
    table["sizes"] = {"full": int(len(full.labels)), "curated": int(len(kept))}
    table = add_statistics(table, removed_fraction_per_class=removed_fraction_per_class(full.labels, kept, len(classes)))
    staged = StagedStore(store)  # both tables or neither
    staged.put_json(_key(run_id, "finetune", "table.json"), table)
    staged.put_text(_key(run_id, "finetune", "table.md"), table_markdown(table, classes), "text/markdown")
    staged.commit()
    return table


# ---------------------------------------------------------------- live runs (checkpoints while training goes on)

_LIVE_LOCKS: dict[str, threading.Lock] = {}


def register_live_checkpoints(store: Store, run_id: str, checkpoints: Iterable[tuple[int, bytes | str]], *,
                              finish: bool = False) -> dict:
    """Add (step, safetensors bytes or store key) pairs to a live run, after the steps it already has.

    Unlike register_checkpoints (the whole set at once), this appends: checkpoints/index.json is
    rewritten after each checkpoint is stored, listing every checkpoint so far with "live": true,
    so the interpretation can follow the run (follow_run). With finish: the last checkpoint is
    evaluated on the test split (evaluation/final.npz) and the index is written with "live": false
    and the accuracy, as register_checkpoints leaves it; nothing can be added after that.
    One registration at a time per run: a lock serialises them within a process, and the SDK's
    live callback waits for each before it sends the next.
    """
    from i2x.models import ModelSpec, build_model, checkpoint_from_bytes, checkpoint_to_bytes, load_weights

    with _CACHE_LOCK:
        lock = _LIVE_LOCKS.setdefault(f"{store.url}|{run_id}", threading.Lock())
    with lock:
        record = get_run(store, run_id)
        index_key = _key(run_id, "checkpoints", "index.json")
        if record["checkpoints"] and not record["live"]:
            raise FailedPrecondition(
                f"run {run_id!r} is finished ({len(record['checkpoints'])} checkpoints, not live): register live "
                "checkpoints into a new run", field="run_id")
        saved = list(record["checkpoints"])
        items = sorted(((int(step), source) for step, source in checkpoints), key=lambda item: item[0])
        steps = [step for step, _ in items]
        if not items and not finish:
            raise InvalidArgument("give at least one checkpoint (or finish the run)", field="checkpoints")
        if not items and not saved:
            raise FailedPrecondition(f"run {run_id!r} has no checkpoint to finish with; register one first",
                                     field="checkpoints")
        last = int(saved[-1]["step"]) if saved else -1
        if len(set(steps)) != len(steps) or (steps and steps[0] <= last) or (steps and steps[0] < 0):
            raise InvalidArgument(f"steps must be distinct, >= 0 and after the run's last step {last}, got {steps}",
                                  field="checkpoints.step")
        model = build_model(ModelSpec.from_dict(record["model"]))
        for step, source in items:
            data = store.get_bytes(source) if isinstance(source, str) else bytes(source)
            try:
                state, meta = checkpoint_from_bytes(data)
            except InvalidArgument:
                raise
            except Exception as exc:  # noqa: BLE001  # neither safetensors nor a torch.save zip
                raise InvalidArgument(f"checkpoint of step {step} could not be read ({exc}); give "
                                      "model.state_dict() saved with safetensors or torch.save",
                                      field="checkpoints") from None
            load_weights(model, state)
            meta = {**meta, "step": step, "arch": record["model"]["arch"]}
            key = checkpoint_key(run_id, step)
            store.put_bytes(key, checkpoint_to_bytes(state, meta))
            saved.append({"step": step, "epoch": meta.get("epoch"), "loss": meta.get("loss"),
                          "accuracy": meta.get("accuracy"), "key": key})
            if not finish:
                store.put_json(index_key, {"checkpoints": saved, "live": True})
        if not finish:
            return {"checkpoints": saved, "live": True}
        if not items:  # the model holds no weights yet: load the last registered ones
            state, _ = checkpoint_from_bytes(store.get_bytes(checkpoint_key(run_id, int(saved[-1]["step"]))))
            load_weights(model, state)
        summary = _evaluate_final(store, run_id, model, record)
        index = {"checkpoints": saved, **summary, "live": False}
        store.put_json(index_key, index)
        return index


def require_finished(store: Store, run_id: str, stage: str) -> None:
    """FailedPrecondition while a run is live: `stage` needs its final checkpoint."""
    record = get_run(store, run_id)
    if record.get("live"):
        raise FailedPrecondition(
            f"run {run_id!r} is live (checkpoints still being registered, {len(record['checkpoints'])} so far): "
            f"{stage} needs the final checkpoint; finish the run first (RegisterCheckpoints finish)", field="run_id")
