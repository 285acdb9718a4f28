"""One function per stage of I2X, each reading and writing one run in a Store.

Layout of a run: docs/ARTIFACTS.md. Every unit writes its artifact under a key fixed by its
inputs and skips work whose artifact exists, so a retry or a resumed job never redoes or
corrupts finished work. `progress(done, total, message, artifact=None)` and `cancel.is_set()`
follow docs/INTERNALS.md. The services wrap these in jobs; i2x.engine.pipeline chains them.
"""

from __future__ import annotations

from typing import Callable, Iterable

from i2x.engine.params import ClusterParams, ExplainParams, FinetuneParams, InterpretParams, PrototypeParams
from i2x.storage import Store

Progress = Callable[..., None] | None


def create_run(store: Store, run_id: str, *, model: dict, dataset: dict, train: dict | None = None,
               explanation_fraction: float = 0.1, explanation_seed: int = 42, overwrite: bool = False) -> dict:
    """Validate the specs, write run.json and data/explanation.npz. Returns run.json's content.

    model: i2x.models.ModelSpec as a dict; dataset: i2x.data.DatasetSpec as a dict;
    train: i2x.core.training.TrainConfig as a dict (None for a run that brings its own checkpoints).
    An existing run with the same specs is returned as it is; with other specs it is an error
    unless overwrite.
    """
    raise NotImplementedError


def get_run(store: Store, run_id: str) -> dict:
    """run.json of the run, with its checkpoint list; NotFound(field="run_id") when absent."""
    raise NotImplementedError


def list_runs(store: Store) -> list[str]:
    raise NotImplementedError


def train_run(store: Store, run_id: str, *, progress: Progress = None, cancel=None) -> dict:
    """Train per run.json, writing checkpoints/<step>.safetensors as they come, then
    checkpoints/index.json and evaluation/final.npz. Returns {"checkpoints": [...], "accuracy": ...}."""
    raise NotImplementedError


def register_checkpoints(store: Store, run_id: str, checkpoints: Iterable[tuple[int, bytes | str]]) -> dict:
    """Bring your own run: (step, safetensors bytes or an existing key in the store) pairs.

    Each is loaded into the run's model to check its architecture, then stored under the run.
    Writes checkpoints/index.json and evaluation/final.npz (the last checkpoint on the test split).
    """
    raise NotImplementedError


def interpret_checkpoint(store: Store, run_id: str, step: int, params: InterpretParams,
                         cache: dict | None = None) -> str:
    """One unit: saliency, confidences and predictions of one checkpoint on the explanation set.

    Writes interpretation/<step>.npz unless it exists; returns its key. `cache` (a dict the
    caller keeps) holds the decoded images and the built model between calls, so a worker
    decodes the images once per run, not once per checkpoint.
    """
    raise NotImplementedError


def interpret_run(store: Store, run_id: str, params: InterpretParams, *, progress: Progress = None, cancel=None,
                  map_units: Callable[[list[int]], Iterable[str]] | None = None) -> dict:
    """All checkpoints. map_units(steps) runs interpret_checkpoint for each step and yields the
    keys as units finish (the interpretation service passes a Ray fan-out); default: in-process.
    Writes interpretation/index.json last; returns it."""
    raise NotImplementedError


def extract_prototypes(store: Store, run_id: str, params: PrototypeParams, *, progress: Progress = None,
                       cancel=None) -> dict:
    """Eq. 3 on the final checkpoint's features: clustering/prototypes.npz. Returns a summary."""
    raise NotImplementedError


def cluster_confidences(store: Store, run_id: str, params: ClusterParams, *, progress: Progress = None,
                        cancel=None) -> dict:
    """Eq. 5: HDBSCAN of the confidence changes per step: clustering/confidence_clusters.npz."""
    raise NotImplementedError


def explain_run(store: Store, run_id: str, params: ExplainParams, *, progress: Progress = None,
                cancel=None) -> dict:
    """Eq. 4, 6-8 and the structured explanation: explanation/{intensity,mapping}.npz and
    explanation/explanation.json (returned)."""
    raise NotImplementedError


def curate_run(store: Store, run_id: str, *, prototype: int | None = None, scope: str = "all",
               pair: list[int] | None = None) -> dict:
    """The curated set: explanation-set indices without `prototype` (default: the explanation's
    uncertain prototype). Writes curation/curated.npz; returns sizes and the key."""
    raise NotImplementedError


def finetune_run(store: Store, run_id: str, params: FinetuneParams, *, progress: Progress = None,
                 cancel=None) -> dict:
    """Paper Table 1 from the final checkpoint: finetune/table.json and table.md. Returns the table."""
    raise NotImplementedError
