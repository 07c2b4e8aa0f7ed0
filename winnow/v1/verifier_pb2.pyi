from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Status(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATUS_UNSPECIFIED: _ClassVar[Status]
    STATUS_CORRECT: _ClassVar[Status]
    STATUS_WRONG: _ClassVar[Status]
    STATUS_NO_ANSWER: _ClassVar[Status]
    STATUS_UNPARSABLE: _ClassVar[Status]
    STATUS_TIMEOUT: _ClassVar[Status]
    STATUS_TOO_COMPLEX: _ClassVar[Status]
    STATUS_ERROR: _ClassVar[Status]
STATUS_UNSPECIFIED: Status
STATUS_CORRECT: Status
STATUS_WRONG: Status
STATUS_NO_ANSWER: Status
STATUS_UNPARSABLE: Status
STATUS_TIMEOUT: Status
STATUS_TOO_COMPLEX: Status
STATUS_ERROR: Status

class VerifyRequest(_message.Message):
    __slots__ = ("id", "response", "gold", "task", "options", "prompt")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    GOLD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    id: str
    response: str
    gold: str
    task: str
    options: _containers.ScalarMap[str, str]
    prompt: str
    def __init__(self, id: _Optional[str] = ..., response: _Optional[str] = ..., gold: _Optional[str] = ..., task: _Optional[str] = ..., options: _Optional[_Mapping[str, str]] = ..., prompt: _Optional[str] = ...) -> None: ...

class VerifyResult(_message.Message):
    __slots__ = ("id", "status", "extracted", "path", "detail", "latency_ms", "score")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: Status
    extracted: str
    path: str
    detail: str
    latency_ms: float
    score: float
    def __init__(self, id: _Optional[str] = ..., status: _Optional[_Union[Status, str]] = ..., extracted: _Optional[str] = ..., path: _Optional[str] = ..., detail: _Optional[str] = ..., latency_ms: _Optional[float] = ..., score: _Optional[float] = ...) -> None: ...

class VerifyBatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[VerifyRequest]
    def __init__(self, items: _Optional[_Iterable[_Union[VerifyRequest, _Mapping]]] = ...) -> None: ...

class VerifyBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[VerifyResult]
    def __init__(self, results: _Optional[_Iterable[_Union[VerifyResult, _Mapping]]] = ...) -> None: ...
