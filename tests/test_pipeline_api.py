"""One pipeline API: the SDK's Client.run_pipeline and the in-process run_pipeline take the same
parameters with the same defaults (the in-process one adds the store first and `cancel`)."""

from __future__ import annotations

import inspect


def test_sdk_and_in_process_run_pipeline_share_one_signature():
    from i2x.client import Client
    from i2x.engine.pipeline import run_pipeline

    sdk = dict(inspect.signature(Client.run_pipeline).parameters)
    local = dict(inspect.signature(run_pipeline).parameters)
    assert list(sdk)[0] == "self" and list(local)[0] == "store"
    sdk.pop("self")
    local.pop("store")
    local.pop("cancel")
    assert list(sdk) == list(local)
    assert {k: p.default for k, p in sdk.items()} == {k: p.default for k, p in local.items()}
    assert sdk["report"].default is True and sdk["overwrite"].default is False


def test_stage_parameters_as_dicts_or_dataclasses_are_the_same():
    from i2x.client.client import as_dict
    from i2x.engine.params import FinetuneParams, PrototypeParams
    from i2x.engine.pipeline import _params

    assert _params(PrototypeParams, {"n_prototypes": 8}, "prototypes") == PrototypeParams(n_prototypes=8)
    assert as_dict(FinetuneParams(repeats=2))["repeats"] == 2 and as_dict({"repeats": 2}) == {"repeats": 2}
    assert as_dict(None) is None
