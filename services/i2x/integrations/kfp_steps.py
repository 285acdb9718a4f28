"""The steps of the Kubeflow pipeline (i2x.integrations.kfp) as plain Python over the SDK, no kfp:
each component imports run_step from here and returns what it returns (JSON: run ids, store URIs)."""

from __future__ import annotations

PORTS = {"training": 50051, "interpretation": 50052, "clustering": 50053, "explanation": 50054}


def store_uri(store: str, key: str) -> str:
    """Where a key of the services' store lives: s3://BUCKET/PREFIX/KEY or a local path."""
    return f"{store.rstrip('/')}/{key}"


def client_for(services: str, token: str = ""):
    """An SDK Client from a template like 'i2x-{service}.i2x.svc:{port}', a HOST (the default ports),
    or a JSON object {"training": "host:port", ...}."""
    import json
    import os

    from i2x.client import Client

    if services.lstrip().startswith("{\""):
        addresses = json.loads(services)
    else:
        template = services if "{" in services else services + ":{port}"
        addresses = {s: template.format(service=s, port=p) for s, p in PORTS.items()}
    return Client(**addresses, token=token or os.environ.get("I2X_API_TOKEN") or None)


def run_step(step: str, run_id: str, services: str, store: str, params: dict | None = None,
             timeout: float | None = None) -> dict:
    """One stage of the pipeline through the services; returns {"run_id", "store_uri", ...} (JSON only)."""
    params = dict(params or {})
    key = lambda *parts: "/".join(("runs", run_id, *parts))  # noqa: E731
    with client_for(services, params.pop("token", "")) as client:
        if step == "register":
            checkpoints = {int(s): k for s, k in (params.pop("checkpoints", None) or {}).items()}
            import grpc

            try:
                run = client.get_run(run_id)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                run = client.create_run(run_id, model=params.get("model"), dataset=params.get("dataset"),
                                        train=None if checkpoints else (params.get("train") or {}))
            if not run.checkpoints:
                job = client.register_checkpoints(run_id, checkpoints) if checkpoints else client.train(run_id)
                job.result(timeout)
                run = client.get_run(run_id)
            return {"run_id": run_id, "steps": run.steps, "store_uri": store_uri(store, key("checkpoints", "index.json"))}
        if step == "interpret":
            result = client.interpret(run_id, **params).result(timeout)
            return {"run_id": run_id, "steps": result.get("steps", []),
                    "store_uri": store_uri(store, key("interpretation", "index.json"))}
        if step == "prototypes":
            client.prototypes(run_id, **params).result(timeout)
            return {"run_id": run_id, "store_uri": store_uri(store, key("clustering", "prototypes.npz"))}
        if step == "clusters":
            client.cluster_confidences(run_id, **params).result(timeout)
            return {"run_id": run_id, "store_uri": store_uri(store, key("clustering", "confidence_clusters.npz"))}
        if step == "explain":
            result = client.explain(run_id, **params).result(timeout)
            summary = client.pair_analysis(run_id)
            return {"run_id": run_id, "pair": list(summary.pair), "uncertain_prototype": summary.uncertain_prototype,
                    "warnings": result.get("warnings", []),
                    "store_uri": store_uri(store, key("explanation", "explanation.json"))}
        if step == "finetune":
            if int(params.get("repeats", 0) or 0) < 1:
                return {"run_id": run_id, "skipped": True, "rows": [], "store_uri": ""}
            if client.pair_analysis(run_id).uncertain_prototype is None:
                return {"run_id": run_id, "skipped": True, "rows": [], "store_uri": "",
                        "note": "no uncertain prototype in the pair: nothing to curate"}
            client.curate(run_id, scope=params.pop("curation_scope", None))
            client.finetune(run_id, **params).result(timeout)
            table = client.finetune_table(run_id)
            rows = [{"protocol": r.protocol, "accuracy": r.accuracy[0], "sum": r.sum[0]} for r in table.rows]
            tests = [{"metric": w.metric, "t": w.t, "p": w.p, "significant": w.significant, "text": w.text}
                     for w in table.tests]  # Welch's t, curated->full vs full->full
            return {"run_id": run_id, "skipped": False, "rows": rows, "tests": tests,
                    "store_uri": store_uri(store, key("finetune", "table.json"))}
        if step == "report":
            result = client.report(run_id).result(timeout)
            return {"run_id": run_id, "store_uri": store_uri(store, result["key"]),
                    "figures": [store_uri(store, k) for k in result.get("figure_keys", [])]}
    raise ValueError(f"unknown step {step!r}; one of register, interpret, prototypes, clusters, explain, "
                     "finetune, report")
