"""Regenerate the committed gRPC stubs from protos/i2x/v1: `python -m i2x.v1.generate`.

Needs grpcio-tools (the test extra). Output goes next to this file (client/i2x/v1), with
imports that follow the proto path (`from i2x.v1 import common_pb2`).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
PROTO_ROOT = REPO / "protos"
PROTO_FILES = ("common", "jobs", "training", "interpretation", "clustering", "explanation")


def generate(out_root: Path | None = None) -> list[Path]:
    """Run protoc for every proto into `out_root` (default: client/). Returns the written files."""
    from grpc_tools import protoc
    import grpc_tools

    out_root = Path(out_root or REPO / "client")
    (out_root / "i2x" / "v1").mkdir(parents=True, exist_ok=True)
    include = str(Path(grpc_tools.__file__).parent / "_proto")  # well-known types
    protos = [str(PROTO_ROOT / "i2x" / "v1" / f"{name}.proto") for name in PROTO_FILES]
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", *protos]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    out_dir = out_root / "i2x" / "v1"
    return sorted(p for p in out_dir.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")))


if __name__ == "__main__":
    for path in generate(Path(sys.argv[1]) if len(sys.argv) > 1 else None):
        print(path)
