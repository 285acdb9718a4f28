"""The committed stubs in client/i2x/v1 are exactly what protoc makes from protos/i2x/v1."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

from i2x.v1 import generate  # noqa: E402

COMMITTED = Path(generate.__file__).resolve().parent


def test_regenerated_stubs_match_committed(tmp_path):
    written = generate.generate(tmp_path)
    assert written, "protoc wrote nothing"
    names = {p.name for p in written}
    committed = {p.name for p in COMMITTED.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))}
    assert names == committed, f"stub files differ: run `python -m i2x.v1.generate` (new {names - committed}, stale {committed - names})"
    for path in written:
        assert path.read_bytes() == (COMMITTED / path.name).read_bytes(), (
            f"{path.name} is out of date: run `python -m i2x.v1.generate` and commit the result")


def test_every_enum_has_unspecified_zero_and_every_field_is_commented():
    from i2x.v1 import clustering_pb2, common_pb2, explanation_pb2, interpretation_pb2, jobs_pb2, training_pb2

    for module in (common_pb2, jobs_pb2, training_pb2, interpretation_pb2, clustering_pb2, explanation_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            zero = enum.values_by_number[0].name
            assert zero.endswith("_UNSPECIFIED"), f"{enum.full_name} zero value is {zero}"
    # Comments live in the .proto sources: check every field line is preceded by a // line.
    for proto in (COMMITTED.parents[2] / "protos" / "i2x" / "v1").glob("*.proto"):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            stripped = line.strip()
            is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "option", "//"))
            is_rpc = stripped.startswith("rpc ")
            if is_field or is_rpc:
                assert lines[number - 1].strip().startswith("//"), f"{proto.name}:{number + 1} has no comment: {stripped}"


def test_configuration_doc_lists_every_setting():
    from i2x import config

    text = (COMMITTED.parents[2] / "docs" / "CONFIGURATION.md").read_text()
    missing = [s.env for s in config.SETTINGS if f"`{s.env}`" not in text]
    assert not missing, f"docs/CONFIGURATION.md lacks {missing}: regenerate its table from i2x.config.SETTINGS"


def test_readme_names_every_setting():
    from i2x import config

    text = (COMMITTED.parents[2] / "README.md").read_text()
    missing = [s.env for s in config.SETTINGS if f"`{s.env}`" not in text]
    assert not missing, f"README.md's configuration table lacks {missing}"
