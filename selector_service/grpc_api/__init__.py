"""The gRPC transport (`pcm.v1.ChunkSelector`, grpc.aio): a thin layer over SelectorService."""

from selector_service.grpc_api.server import SERVICE_NAME, GrpcServer, build_grpc_server
from selector_service.grpc_api.servicer import ChunkSelectorServicer

__all__ = ["SERVICE_NAME", "ChunkSelectorServicer", "GrpcServer", "build_grpc_server"]
