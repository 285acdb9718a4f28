"""ExplanationService over stages.explain_run / get_explanation / curate_run, and the report
(i2x.report.build_report) stored beside the run's artifacts.

The typed messages are read from explanation/explanation.json (schema: docs/EXPLANATION.md).
"""

from __future__ import annotations

import asyncio
import json

from i2x.core.errors import FailedPrecondition, InvalidArgument, NotFound
from i2x.engine import stages
from i2x.engine.params import ExplainParams
from i2x.servicers import (SCOPE_NAMES, SCOPE_VALUES, StageServicer, count, enum_value, explain_params, pair_of,
                           run_id_of, stage_progress)
from i2x.storage import run_key, validate_id
from i2x.v1 import common_pb2, explanation_pb2, explanation_pb2_grpc

VERDICTS = {"reliable": explanation_pb2.PROTOTYPE_VERDICT_RELIABLE,
            "uncertain": explanation_pb2.PROTOTYPE_VERDICT_UNCERTAIN,
            "compensated": explanation_pb2.PROTOTYPE_VERDICT_COMPENSATED,
            "inactive": explanation_pb2.PROTOTYPE_VERDICT_INACTIVE,
            "one-class": explanation_pb2.PROTOTYPE_VERDICT_ONE_CLASS,
            "background": explanation_pb2.PROTOTYPE_VERDICT_BACKGROUND}


# Thresholds of i2x.core.explain.pair_analysis, taken from the explanation's recorded parameters.
PAIR_PARAMETERS = ("min_presence_fraction", "min_contribution_fraction")


class ExplanationServicer(StageServicer, explanation_pb2_grpc.ExplanationServiceServicer):
    service = "explanation"

    def job_function(self, kind, run_id, params):
        from i2x.integrations.mlflow import with_export  # MLflow export after the job when MLFLOW_TRACKING_URI is set

        job = self._job_function(kind, run_id, params)
        return None if job is None else with_export(self.store, run_id, job)

    def _job_function(self, kind, run_id, params):
        if kind == "report":
            return self._report_job(run_id, params.get("compare_run_id") or None)
        if kind != "explain":
            return None
        store = self.store

        def run(ctx):
            explanation = stages.explain_run(store, run_id, ExplainParams.from_dict(params), **stage_progress(ctx))
            pair = _analysed_pair(explanation)
            return {"pair": [pair.get("a"), pair.get("b")], "uncertain_prototype": explanation.get("uncertain_prototype"),
                    "key": run_key(run_id, "explanation", "explanation.json")}

        return run

    async def StartExplanation(self, request, context):
        run_id = run_id_of(request)
        record = await asyncio.to_thread(stages.get_run, self.store, run_id)
        params = explain_params(request.params, len(record.get("classes", [])) or None)
        await asyncio.to_thread(self._require_inputs, run_id)
        return await self.start("explain", run_id, params.to_dict(), request.request_id)

    async def StartReport(self, request, context):
        run_id = run_id_of(request)
        compare_run_id = validate_id(request.compare_run_id, "compare_run_id") if request.compare_run_id else None
        await asyncio.to_thread(self._require_report_inputs, run_id, compare_run_id)
        return await self.start("report", run_id, {"compare_run_id": compare_run_id}, request.request_id)

    def _require_report_inputs(self, run_id: str, compare_run_id: str | None) -> None:
        """The report explains a run: without explanation.json it would be figures of nothing."""
        run = stages.get_run(self.store, run_id)
        stages.require(self.store, run_key(run_id, "explanation", "explanation.json"), "the explanation",
                       "explanation")
        if compare_run_id is None:
            return
        if compare_run_id == run_id:
            raise InvalidArgument(f"compare a run with another run, not with itself ({run_id!r}); leave it empty "
                                  "for the run's own report", field="compare_run_id")
        key = run_key(compare_run_id, "run.json")
        if not self.store.exists(key):
            raise NotFound(f"no run {compare_run_id!r} in {self.store.url} to compare with", field="compare_run_id")
        other = self.store.get_json(key)
        if [str(c) for c in run.get("classes", [])] != [str(c) for c in other.get("classes", [])]:
            raise InvalidArgument(f"runs {run_id!r} and {compare_run_id!r} have different classes "
                                  f"({run.get('classes')} vs {other.get('classes')}); compare runs on the same "
                                  "data", field="compare_run_id")
        if not self.store.exists(run_key(compare_run_id, "explanation", "explanation.json")):
            raise FailedPrecondition(f"run {compare_run_id!r} has no explanation yet: run its explanation stage "
                                     "before comparing with it", field="compare_run_id")

    def _report_job(self, run_id: str, compare_run_id: str | None):
        store = self.store

        def run(ctx):
            from i2x.report import build_report

            self._require_report_inputs(run_id, compare_run_id)  # a resumed job re-checks its inputs
            key = run_key(run_id, "report.html")
            ctx.progress(0, 1, "rendering the figures and the HTML report")
            ctx.check_cancelled()
            figures_prefix = run_key(run_id, "figures") + "/"
            # figures/ holds exactly this report's figures: drop those of an earlier explanation (another pair).
            for stale in store.list(figures_prefix):
                store.delete(stale)
            build_report(store, run_id, compare_with=(store, compare_run_id) if compare_run_id else None)
            ctx.progress(1, 1, "report.html", artifact=key)
            figures = [k for k in store.list(figures_prefix) if k.endswith(".png")]
            return {"key": key, "figure_keys": figures, "compare_run_id": compare_run_id}

        return run

    def _require_inputs(self, run_id: str) -> None:
        stages.get_run(self.store, run_id)
        for parts, what, stage in ((("interpretation", "index.json"), "the interpretation", "interpretation"),
                                   (("clustering", "prototypes.npz"), "the prototypes", "prototype (clustering)"),
                                   (("clustering", "confidence_clusters.npz"), "the confidence clusters",
                                    "confidence clustering")):
            stages.require(self.store, run_key(run_id, *parts), what, stage)

    async def _explanation(self, run_id: str) -> dict:
        return await asyncio.to_thread(stages.get_explanation, self.store, run_id)

    async def GetExplanation(self, request, context):
        run_id = run_id_of(request)
        doc = await self._explanation(run_id)
        pair = _analysed_pair(doc)
        summary = explanation_pb2.ExplanationSummary(
            run_id=run_id, classes=[str(c) for c in doc.get("classes", [])],
            pair=[int(pair["a"]), int(pair["b"])] if "a" in pair else [],
            steps=[int(s) for s in doc.get("checkpoint_steps", [])], num_prototypes=int(doc.get("n_prototypes", 0)),
            key=run_key(run_id, "explanation", "explanation.json"),
            artifact_keys=[run_key(run_id, "explanation", name) for name in ("intensity.npz", "mapping.npz")])
        if doc.get("uncertain_prototype") is not None:
            summary.uncertain_prototype = int(doc["uncertain_prototype"])
        return summary

    async def GetClassExplanation(self, request, context):
        run_id = run_id_of(request)
        doc = await self._explanation(run_id)
        per_class = doc.get("per_class", [])
        c = count(request.class_index, "class_index", low=0, high=max(len(per_class) - 1, 0))
        return class_explanation_to_proto(run_id, per_class[c])

    async def GetPairAnalysis(self, request, context):
        run_id = run_id_of(request)
        pair = pair_of(request.pair, "pair")
        doc = await self._explanation(run_id)
        if pair is None or sorted(pair) == sorted(_explained_pair(doc)):
            return pair_analysis_to_proto(run_id, doc.get("pair_analysis") or {}, _analysed_pair(doc))
        n_classes = len(doc.get("classes", []))
        if max(pair) >= n_classes:
            raise InvalidArgument(f"class indices must be in 0..{n_classes - 1}, got {pair}", field="pair")
        analysis, counts = await asyncio.to_thread(self._analyze_pair, run_id, pair, doc.get("parameters") or {})
        return pair_analysis_to_proto(run_id, analysis, counts)

    def _analyze_pair(self, run_id: str, pair: list[int], parameters: dict) -> tuple[dict, dict]:
        """Any pair, with the explanation's own pair-analysis thresholds; confusions of the final checkpoint."""
        params = {name: parameters[name] for name in PAIR_PARAMETERS if name in parameters}
        analysis = stages.analyze_pair(self.store, run_id, pair, **params)
        confusion = self.store.get_npz(run_key(run_id, "evaluation", "final.npz"))["confusion"]
        a, b = int(analysis["a"]), int(analysis["b"])
        return analysis, {"a_to_b": int(confusion[a, b]), "b_to_a": int(confusion[b, a])}

    async def Curate(self, request, context):
        run_id = run_id_of(request)
        scope = SCOPE_NAMES.get(enum_value(common_pb2.CurationScope, request.scope, "scope"), "all")
        prototype = count(request.prototype, "prototype", low=0, high=100_000) if request.HasField("prototype") else None
        record = await asyncio.to_thread(stages.get_run, self.store, run_id)
        pair = pair_of(request.pair, "pair", len(record.get("classes", [])) or None)
        result = await asyncio.to_thread(stages.curate_run, self.store, run_id, prototype=prototype, scope=scope,
                                         pair=pair)
        return explanation_pb2.CurationResult(
            run_id=run_id, prototype=int(result["prototype"]), size_before=int(result["size_before"]),
            size_after=int(result["size_after"]), removed_per_class=[int(v) for v in result["removed_per_class"]],
            key=result["key"], scope=SCOPE_VALUES[result["scope"]], pair=[int(v) for v in result["pair"]])


def _analysed_pair(doc: dict) -> dict:
    """The pair pair_analysis refers to (schema 2: analysed_pair; schema 1 had only most_confused_pair)."""
    return doc.get("analysed_pair") or doc.get("most_confused_pair") or {}


def _explained_pair(doc: dict) -> list[int]:
    pair = _analysed_pair(doc)
    return [int(pair["a"]), int(pair["b"])] if "a" in pair else []


def class_explanation_to_proto(run_id: str, entry: dict) -> explanation_pb2.ClassExplanation:
    message = explanation_pb2.ClassExplanation(
        run_id=run_id, class_index=int(entry["class"]), class_name=str(entry.get("name", entry["class"])),
        num_samples=int(entry.get("n_samples", 0)), shared_prototypes=[int(m) for m in entry.get("shared", [])],
        statements=[str(s) for s in entry.get("statements", [])], json=json.dumps(entry))
    for number, group in enumerate(entry.get("specialized", [])):
        message.specialized.append(explanation_pb2.SpecializedGroup(
            group=number, prototypes=[int(m) for m in group.get("prototypes", [])],
            fractions=[float(f) for f in group.get("fractions", [])], num_samples=int(group.get("size", 0))))
    for key_ckpt in entry.get("key_checkpoints", []):
        item = message.key_checkpoints.add(step=int(key_ckpt["step"]), next_step=int(key_ckpt.get("next_step", 0)),
                                           confidence_change=float(key_ckpt.get("confidence_change", 0.0)))
        for driver in key_ckpt.get("prototypes", []):
            item.prototypes.append(explanation_pb2.DrivingPrototype(
                prototype=int(driver["prototype"]), weight=float(driver.get("weight", 0.0)),
                separates_from=[explanation_pb2.Opponent(class_index=int(o["class"]), weight=float(o.get("weight", 0.0)))
                                for o in driver.get("separates_from", [])]))
    return message


def pair_analysis_to_proto(run_id: str, analysis: dict, confused: dict) -> explanation_pb2.PairAnalysis:
    if "a" not in analysis:
        raise InvalidArgument("the explanation has no pair analysis", field="run_id")
    message = explanation_pb2.PairAnalysis(
        run_id=run_id, class_a=int(analysis["a"]), class_b=int(analysis["b"]),
        names=[str(n) for n in analysis.get("names", [])], steps=[int(s) for s in analysis.get("steps", [])],
        uncertain_prototypes=[int(u["prototype"]) for u in analysis.get("uncertain", [])],
        reliable_prototypes=[int(r["prototype"]) for r in analysis.get("reliable", [])],
        a_to_b=int(confused.get("a_to_b", 0)), b_to_a=int(confused.get("b_to_a", 0)), json=json.dumps(analysis))
    if analysis.get("uncertain_prototype") is not None:
        message.uncertain_prototype = int(analysis["uncertain_prototype"])
    for row in analysis.get("prototypes", []):
        favours = row.get("favours")
        message.prototypes.append(explanation_pb2.PrototypeRole(
            prototype=int(row["prototype"]), verdict=VERDICTS.get(row.get("category"), 0),
            favours=int(favours) if isinstance(favours, int) else -1, flips=int(row.get("flips", 0)),
            unsupported_flips=int(row.get("unsupported_flips", 0)), score=float(row.get("score", 0.0)),
            presence_a=float(row.get("presence_a", 0.0)), presence_b=float(row.get("presence_b", 0.0)),
            contribution=[float(v) for v in row.get("contribution", [])]))
    return message
