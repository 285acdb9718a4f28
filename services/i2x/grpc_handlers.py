"""Rewrapping a gRPC method handler, shared by the server's interceptors (auth, errors) and the
metrics interceptor; a module of its own so that neither imports the other."""

from __future__ import annotations

from typing import Callable

import grpc


def rebuild_handler(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable, bool], Callable],
             deserializer: Callable[[Callable | None], Callable | None] | None = None) -> grpc.RpcMethodHandler:
    """The same kind of handler as `handler`, its behaviour replaced by wrap(behaviour, streams_out)
    (and its request deserializer by deserializer(original), when given)."""
    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, False),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, True),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, False),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, True),
    )
    for attribute, make, streams_out in kinds:
        behaviour = getattr(handler, attribute)
        if behaviour is not None:
            request_deserializer = handler.request_deserializer
            if deserializer is not None:
                request_deserializer = deserializer(request_deserializer)
            return make(wrap(behaviour, streams_out),
                        request_deserializer=request_deserializer,
                        response_serializer=handler.response_serializer)
    return handler
