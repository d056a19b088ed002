from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Evidence(_message.Message):
    __slots__ = ("kind", "ts_ns", "pid", "comm", "detail")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TS_NS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    kind: str
    ts_ns: int
    pid: int
    comm: str
    detail: str
    def __init__(self, kind: _Optional[str] = ..., ts_ns: _Optional[int] = ..., pid: _Optional[int] = ..., comm: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class AlertMessage(_message.Message):
    __slots__ = ("seq", "id", "time", "sandbox", "agent", "step", "tool_call", "detector", "rule", "score", "threshold", "severity", "action", "evidence", "event_ts_ns", "enforced_ts_ns", "status", "analyst", "comment", "tool_args")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TS_NS_FIELD_NUMBER: _ClassVar[int]
    ENFORCED_TS_NS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    TOOL_ARGS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    id: str
    time: float
    sandbox: str
    agent: str
    step: str
    tool_call: str
    detector: str
    rule: str
    score: float
    threshold: float
    severity: str
    action: str
    evidence: _containers.RepeatedCompositeFieldContainer[Evidence]
    event_ts_ns: int
    enforced_ts_ns: int
    status: str
    analyst: str
    comment: str
    tool_args: str
    def __init__(self, seq: _Optional[int] = ..., id: _Optional[str] = ..., time: _Optional[float] = ..., sandbox: _Optional[str] = ..., agent: _Optional[str] = ..., step: _Optional[str] = ..., tool_call: _Optional[str] = ..., detector: _Optional[str] = ..., rule: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., severity: _Optional[str] = ..., action: _Optional[str] = ..., evidence: _Optional[_Iterable[_Union[Evidence, _Mapping]]] = ..., event_ts_ns: _Optional[int] = ..., enforced_ts_ns: _Optional[int] = ..., status: _Optional[str] = ..., analyst: _Optional[str] = ..., comment: _Optional[str] = ..., tool_args: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("after_id",)
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    after_id: str
    def __init__(self, after_id: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("severity", "sandbox", "agent", "status", "text", "limit")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    severity: str
    sandbox: str
    agent: str
    status: str
    text: str
    limit: int
    def __init__(self, severity: _Optional[str] = ..., sandbox: _Optional[str] = ..., agent: _Optional[str] = ..., status: _Optional[str] = ..., text: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("alerts",)
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[AlertMessage]
    def __init__(self, alerts: _Optional[_Iterable[_Union[AlertMessage, _Mapping]]] = ...) -> None: ...

class ReviewRequest(_message.Message):
    __slots__ = ("alert_id", "analyst", "comment")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    ANALYST_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    analyst: str
    comment: str
    def __init__(self, alert_id: _Optional[str] = ..., analyst: _Optional[str] = ..., comment: _Optional[str] = ...) -> None: ...

class ReviewResponse(_message.Message):
    __slots__ = ("alert",)
    ALERT_FIELD_NUMBER: _ClassVar[int]
    alert: AlertMessage
    def __init__(self, alert: _Optional[_Union[AlertMessage, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SandboxStatus(_message.Message):
    __slots__ = ("name", "agent", "running_s", "events", "lost", "verdict")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_S_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    name: str
    agent: str
    running_s: float
    events: int
    lost: int
    verdict: str
    def __init__(self, name: _Optional[str] = ..., agent: _Optional[str] = ..., running_s: _Optional[float] = ..., events: _Optional[int] = ..., lost: _Optional[int] = ..., verdict: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("sandboxes", "events_per_s", "events_total", "lost_total", "profiles", "policies", "alerts_total", "api_calls_allowed", "api_calls_stopped")
    SANDBOXES_FIELD_NUMBER: _ClassVar[int]
    EVENTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    EVENTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    LOST_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROFILES_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    ALERTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    API_CALLS_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    API_CALLS_STOPPED_FIELD_NUMBER: _ClassVar[int]
    sandboxes: _containers.RepeatedCompositeFieldContainer[SandboxStatus]
    events_per_s: float
    events_total: int
    lost_total: int
    profiles: _containers.RepeatedScalarFieldContainer[str]
    policies: _containers.RepeatedScalarFieldContainer[str]
    alerts_total: int
    api_calls_allowed: int
    api_calls_stopped: int
    def __init__(self, sandboxes: _Optional[_Iterable[_Union[SandboxStatus, _Mapping]]] = ..., events_per_s: _Optional[float] = ..., events_total: _Optional[int] = ..., lost_total: _Optional[int] = ..., profiles: _Optional[_Iterable[str]] = ..., policies: _Optional[_Iterable[str]] = ..., alerts_total: _Optional[int] = ..., api_calls_allowed: _Optional[int] = ..., api_calls_stopped: _Optional[int] = ...) -> None: ...

class PolicyRequest(_message.Message):
    __slots__ = ("name", "yaml")
    NAME_FIELD_NUMBER: _ClassVar[int]
    YAML_FIELD_NUMBER: _ClassVar[int]
    name: str
    yaml: str
    def __init__(self, name: _Optional[str] = ..., yaml: _Optional[str] = ...) -> None: ...

class PolicyResponse(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RunRequest(_message.Message):
    __slots__ = ("command", "policy_name", "policy_yaml", "labels", "timeout_s")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_YAML_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    command: _containers.RepeatedScalarFieldContainer[str]
    policy_name: str
    policy_yaml: str
    labels: _containers.ScalarMap[str, str]
    timeout_s: float
    def __init__(self, command: _Optional[_Iterable[str]] = ..., policy_name: _Optional[str] = ..., policy_yaml: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class RunResponse(_message.Message):
    __slots__ = ("result_json",)
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    result_json: str
    def __init__(self, result_json: _Optional[str] = ...) -> None: ...

class WatchApiCallsRequest(_message.Message):
    __slots__ = ("from_seq",)
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    def __init__(self, from_seq: _Optional[int] = ...) -> None: ...

class ApiCallMessage(_message.Message):
    __slots__ = ("seq", "time", "sandbox", "agent", "step", "tool_call", "method", "host", "path", "port", "tls", "body_bytes", "allowed", "held", "reason", "pid", "record", "log")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    BODY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: float
    sandbox: str
    agent: str
    step: str
    tool_call: str
    method: str
    host: str
    path: str
    port: int
    tls: bool
    body_bytes: int
    allowed: bool
    held: bool
    reason: str
    pid: int
    record: int
    log: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[float] = ..., sandbox: _Optional[str] = ..., agent: _Optional[str] = ..., step: _Optional[str] = ..., tool_call: _Optional[str] = ..., method: _Optional[str] = ..., host: _Optional[str] = ..., path: _Optional[str] = ..., port: _Optional[int] = ..., tls: bool = ..., body_bytes: _Optional[int] = ..., allowed: bool = ..., held: bool = ..., reason: _Optional[str] = ..., pid: _Optional[int] = ..., record: _Optional[int] = ..., log: _Optional[str] = ...) -> None: ...
