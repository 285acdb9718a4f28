"""The I2X client SDK: gRPC without the gRPC.

    from i2x.client import Client
    client = Client.from_env()                    # or Client(training="host:50051", ...)
    result = client.run_pipeline("demo", model={"arch": "small_cnn"}, dataset={"kind": "mnist5k"},
                                 train={"preset": "tiny"}, progress=print)
    print(result.pair_analysis.uncertain_prototypes)

Depends only on grpcio, protobuf, numpy and minio.
"""

from i2x.client._version import __version__
from i2x.client.client import DEFAULT_PORTS, Client, JobFailed, ServerInfo, ServiceUnavailable
from i2x.client.jobs import Job, JobEvent, JobInfo
from i2x.client.results import (ClassExplanation, CurationResult, Evaluation, ExplanationSummary, FinetuneRow,
                                FinetuneTable, PairAnalysis, PipelineResult, PrototypeRole, Run, WelchTest)
from i2x.client.store import StoreReader, open_reader

__all__ = ["__version__", "Client", "DEFAULT_PORTS", "ServerInfo", "ServiceUnavailable", "Job", "JobEvent", "JobInfo", "JobFailed", "Run", "Evaluation",
           "ExplanationSummary", "ClassExplanation", "PairAnalysis", "PrototypeRole", "CurationResult",
           "FinetuneRow", "FinetuneTable", "WelchTest", "PipelineResult", "StoreReader", "open_reader"]
