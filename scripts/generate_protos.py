"""Regenerate the committed Python code for proto/ (messages, gRPC stubs, .pyi stubs).

Usage: python scripts/generate_protos.py [OUT_DIR]

Writes exchange/v1/*_pb2*.py(i) under OUT_DIR (default: the repository root).
tests/test_protos.py regenerates into a temporary directory and fails when the
result differs from what is committed.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def proto_sources() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc with the grpc and mypy-protobuf plugins over every .proto file."""
    bin_dir = Path(sys.executable).parent
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={shutil.which('protoc-gen-mypy', path=str(bin_dir))}",
        f"--plugin=protoc-gen-mypy_grpc={shutil.which('protoc-gen-mypy_grpc', path=str(bin_dir))}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *(str(p.relative_to(PROTO_DIR)) for p in proto_sources()),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    out_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    generate(out_dir)


if __name__ == "__main__":
    main()
