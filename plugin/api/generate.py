"""Regenerate api_pb2.py / api_pb2_grpc.py from api.proto (needs grpcio-tools: pip install '.[dev]')."""

from __future__ import annotations

import os
import re

from grpc_tools import protoc


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    code = protoc.main(["grpc_tools.protoc", f"-I{here}", f"--python_out={here}", f"--pyi_out={here}",
                        f"--grpc_python_out={here}", os.path.join(here, "api.proto")])
    if code != 0:
        raise SystemExit(code)
    # protoc writes `import api_pb2`; inside this package it must be a relative import.
    grpc_module = os.path.join(here, "api_pb2_grpc.py")
    with open(grpc_module) as f:
        text = f.read()
    with open(grpc_module, "w") as f:
        f.write(re.sub(r"^import api_pb2 as", "from . import api_pb2 as", text, flags=re.M))


if __name__ == "__main__":
    main()
