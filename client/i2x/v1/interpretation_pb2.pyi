from i2x.v1 import common_pb2 as _common_pb2
from i2x.v1 import jobs_pb2 as _jobs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartInterpretationRequest(_message.Message):
    __slots__ = ("run_id", "steps", "params", "request_id", "follow")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    steps: _containers.RepeatedScalarFieldContainer[int]
    params: _common_pb2.InterpretParams
    request_id: str
    follow: bool
    def __init__(self, run_id: _Optional[str] = ..., steps: _Optional[_Iterable[int]] = ..., params: _Optional[_Union[_common_pb2.InterpretParams, _Mapping]] = ..., request_id: _Optional[str] = ..., follow: bool = ...) -> None: ...
