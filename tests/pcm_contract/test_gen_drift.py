"""The committed gRPC stubs are exactly what scripts/gen_protos.py makes of the proto."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GEN_DIR = ROOT / "pcm_contract" / "gen"


def _load_gen_script():  # scripts/ is not a package
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_committed_stubs_match_the_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    _load_gen_script().generate(tmp_path)
    fresh, committed = _tree(tmp_path), _tree(GEN_DIR)
    assert sorted(committed) == sorted(fresh), (
        "generated file set differs; run `python scripts/gen_protos.py`")
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, (f"stubs out of date with protos/: {stale}; "
                       "run `python scripts/gen_protos.py`")


def test_stubs_import_as_a_package() -> None:
    from pcm_contract.gen.pcm.v1 import selector_pb2, selector_pb2_grpc

    assert selector_pb2.DESCRIPTOR.package == "pcm.v1"
    assert "ChunkSelector" in selector_pb2.DESCRIPTOR.services_by_name
    assert hasattr(selector_pb2_grpc, "ChunkSelectorStub")
