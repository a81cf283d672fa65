"""Regenerate the modules of api.proto (the Device Plugin API), podresources.proto (the kubelet's
PodResources API), and the DRA driver's kubelet APIs (dra_v1.proto, dra_v1beta1.proto, pluginregistration.proto,
dra_health.proto): <name>_pb2.py, <name>_pb2.pyi, <name>_pb2_grpc.py (needs grpcio-tools: pip install '.[dev]')."""

from __future__ import annotations

import os
import re

from grpc_tools import protoc

PROTOS = ("api", "podresources", "dra_v1", "dra_v1beta1", "pluginregistration", "dra_health")


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    for name in PROTOS:
        code = protoc.main(["grpc_tools.protoc", f"-I{here}", f"--python_out={here}", f"--pyi_out={here}",
                            f"--grpc_python_out={here}", os.path.join(here, f"{name}.proto")])
        if code != 0:
            raise SystemExit(code)
        # protoc writes `import <name>_pb2`; inside this package it must be a relative import.
        grpc_module = os.path.join(here, f"{name}_pb2_grpc.py")
        with open(grpc_module) as f:
            text = f.read()
        with open(grpc_module, "w") as f:
            f.write(re.sub(rf"^import {name}_pb2 as", f"from . import {name}_pb2 as", text, flags=re.M))


if __name__ == "__main__":
    main()
