from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeviceProfile(_message.Message):
    __slots__ = ("accelerator", "accelerator_name", "memory_bytes", "threads", "num_examples", "examples_per_second", "upload_bytes_per_second", "download_bytes_per_second", "layer_seconds", "extra")
    class LayerSecondsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    DOWNLOAD_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LAYER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    accelerator: str
    accelerator_name: str
    memory_bytes: int
    threads: int
    num_examples: int
    examples_per_second: float
    upload_bytes_per_second: float
    download_bytes_per_second: float
    layer_seconds: _containers.ScalarMap[str, float]
    extra: _containers.ScalarMap[str, str]
    def __init__(self, accelerator: _Optional[str] = ..., accelerator_name: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., threads: _Optional[int] = ..., num_examples: _Optional[int] = ..., examples_per_second: _Optional[float] = ..., upload_bytes_per_second: _Optional[float] = ..., download_bytes_per_second: _Optional[float] = ..., layer_seconds: _Optional[_Mapping[str, float]] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("client_id", "token", "profile", "protocol", "instance")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    token: str
    profile: DeviceProfile
    protocol: str
    instance: str
    def __init__(self, client_id: _Optional[str] = ..., token: _Optional[str] = ..., profile: _Optional[_Union[DeviceProfile, _Mapping]] = ..., protocol: _Optional[str] = ..., instance: _Optional[str] = ...) -> None: ...

class RunSpec(_message.Message):
    __slots__ = ("run_id", "strategy", "model", "num_labels", "rounds", "seed", "partition", "num_partitions", "dirichlet_alpha", "test_fraction", "dataset", "max_length", "chunk_bytes", "label_names", "config_json", "adapter", "task", "heartbeat_s", "eval_examples", "generate_examples", "max_new_tokens", "partition_scheme", "partition_column", "dataset_sha256", "columns", "probe_link")
    class ColumnsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_LABELS_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTITIONS_FIELD_NUMBER: _ClassVar[int]
    DIRICHLET_ALPHA_FIELD_NUMBER: _ClassVar[int]
    TEST_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABEL_NAMES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_S_FIELD_NUMBER: _ClassVar[int]
    EVAL_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    GENERATE_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PARTITION_SCHEME_FIELD_NUMBER: _ClassVar[int]
    PARTITION_COLUMN_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    PROBE_LINK_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    strategy: str
    model: str
    num_labels: int
    rounds: int
    seed: int
    partition: int
    num_partitions: int
    dirichlet_alpha: float
    test_fraction: float
    dataset: str
    max_length: int
    chunk_bytes: int
    label_names: _containers.RepeatedScalarFieldContainer[str]
    config_json: str
    adapter: AdapterSpec
    task: str
    heartbeat_s: float
    eval_examples: int
    generate_examples: int
    max_new_tokens: int
    partition_scheme: str
    partition_column: str
    dataset_sha256: str
    columns: _containers.ScalarMap[str, str]
    probe_link: bool
    def __init__(self, run_id: _Optional[str] = ..., strategy: _Optional[str] = ..., model: _Optional[str] = ..., num_labels: _Optional[int] = ..., rounds: _Optional[int] = ..., seed: _Optional[int] = ..., partition: _Optional[int] = ..., num_partitions: _Optional[int] = ..., dirichlet_alpha: _Optional[float] = ..., test_fraction: _Optional[float] = ..., dataset: _Optional[str] = ..., max_length: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., label_names: _Optional[_Iterable[str]] = ..., config_json: _Optional[str] = ..., adapter: _Optional[_Union[AdapterSpec, _Mapping]] = ..., task: _Optional[str] = ..., heartbeat_s: _Optional[float] = ..., eval_examples: _Optional[int] = ..., generate_examples: _Optional[int] = ..., max_new_tokens: _Optional[int] = ..., partition_scheme: _Optional[str] = ..., partition_column: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., columns: _Optional[_Mapping[str, str]] = ..., probe_link: _Optional[bool] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("session_id", "spec")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    spec: RunSpec
    def __init__(self, session_id: _Optional[str] = ..., spec: _Optional[_Union[RunSpec, _Mapping]] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("session_id", "last_round", "wait_seconds")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    last_round: int
    wait_seconds: int
    def __init__(self, session_id: _Optional[str] = ..., last_round: _Optional[int] = ..., wait_seconds: _Optional[int] = ...) -> None: ...

class AdapterSpec(_message.Message):
    __slots__ = ("kind", "target_modules", "rank", "ranks", "alpha", "dropout", "modules_to_save", "init_seed", "options")
    class RanksEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    MODULES_TO_SAVE_FIELD_NUMBER: _ClassVar[int]
    INIT_SEED_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    rank: int
    ranks: _containers.ScalarMap[str, int]
    alpha: float
    dropout: float
    modules_to_save: _containers.RepeatedScalarFieldContainer[str]
    init_seed: int
    options: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., target_modules: _Optional[_Iterable[str]] = ..., rank: _Optional[int] = ..., ranks: _Optional[_Mapping[str, int]] = ..., alpha: _Optional[float] = ..., dropout: _Optional[float] = ..., modules_to_save: _Optional[_Iterable[str]] = ..., init_seed: _Optional[int] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class LocalTraining(_message.Message):
    __slots__ = ("epochs", "max_steps", "batch_size", "learning_rate", "weight_decay", "optimizer", "max_grad_norm", "regularisation", "dp")
    class RegularisationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    REGULARISATION_FIELD_NUMBER: _ClassVar[int]
    DP_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    max_steps: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    optimizer: str
    max_grad_norm: float
    regularisation: _containers.ScalarMap[str, float]
    dp: DifferentialPrivacy
    def __init__(self, epochs: _Optional[int] = ..., max_steps: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., weight_decay: _Optional[float] = ..., optimizer: _Optional[str] = ..., max_grad_norm: _Optional[float] = ..., regularisation: _Optional[_Mapping[str, float]] = ..., dp: _Optional[_Union[DifferentialPrivacy, _Mapping]] = ...) -> None: ...

class DifferentialPrivacy(_message.Message):
    __slots__ = ("enabled", "noise_multiplier", "clip_norm", "target_epsilon", "delta")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    noise_multiplier: float
    clip_norm: float
    target_epsilon: float
    delta: float
    def __init__(self, enabled: _Optional[bool] = ..., noise_multiplier: _Optional[float] = ..., clip_norm: _Optional[float] = ..., target_epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class Codec(_message.Message):
    __slots__ = ("stages",)
    STAGES_FIELD_NUMBER: _ClassVar[int]
    stages: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, stages: _Optional[_Iterable[str]] = ...) -> None: ...

class BlobRef(_message.Message):
    __slots__ = ("version", "digest", "size", "codec")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    version: str
    digest: str
    size: int
    codec: Codec
    def __init__(self, version: _Optional[str] = ..., digest: _Optional[str] = ..., size: _Optional[int] = ..., codec: _Optional[_Union[Codec, _Mapping]] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("round", "adapter", "training", "train", "freeze", "upload", "keep_local", "upload_kind", "upload_codec", "max_upload_bytes", "global_state", "deadline_unix", "report", "options")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    FREEZE_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    KEEP_LOCAL_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_KIND_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_CODEC_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    GLOBAL_STATE_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_UNIX_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    round: int
    adapter: AdapterSpec
    training: LocalTraining
    train: _containers.RepeatedScalarFieldContainer[str]
    freeze: _containers.RepeatedScalarFieldContainer[str]
    upload: _containers.RepeatedScalarFieldContainer[str]
    keep_local: _containers.RepeatedScalarFieldContainer[str]
    upload_kind: str
    upload_codec: Codec
    max_upload_bytes: int
    global_state: BlobRef
    deadline_unix: float
    report: _containers.RepeatedScalarFieldContainer[str]
    options: _containers.ScalarMap[str, str]
    def __init__(self, round: _Optional[int] = ..., adapter: _Optional[_Union[AdapterSpec, _Mapping]] = ..., training: _Optional[_Union[LocalTraining, _Mapping]] = ..., train: _Optional[_Iterable[str]] = ..., freeze: _Optional[_Iterable[str]] = ..., upload: _Optional[_Iterable[str]] = ..., keep_local: _Optional[_Iterable[str]] = ..., upload_kind: _Optional[str] = ..., upload_codec: _Optional[_Union[Codec, _Mapping]] = ..., max_upload_bytes: _Optional[int] = ..., global_state: _Optional[_Union[BlobRef, _Mapping]] = ..., deadline_unix: _Optional[float] = ..., report: _Optional[_Iterable[str]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("kind", "round", "plan", "retry_after_ms", "message", "failed")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        WAIT: _ClassVar[Task.Kind]
        TRAIN: _ClassVar[Task.Kind]
        DONE: _ClassVar[Task.Kind]
    WAIT: Task.Kind
    TRAIN: Task.Kind
    DONE: Task.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    kind: Task.Kind
    round: int
    plan: Plan
    retry_after_ms: int
    message: str
    failed: bool
    def __init__(self, kind: _Optional[_Union[Task.Kind, str]] = ..., round: _Optional[int] = ..., plan: _Optional[_Union[Plan, _Mapping]] = ..., retry_after_ms: _Optional[int] = ..., message: _Optional[str] = ..., failed: _Optional[bool] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("session_id", "round", "offset")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    offset: int
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("offset", "data", "digest", "total_size", "blob_digest")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    digest: str
    total_size: int
    blob_digest: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., digest: _Optional[str] = ..., total_size: _Optional[int] = ..., blob_digest: _Optional[str] = ...) -> None: ...

class UploadChunk(_message.Message):
    __slots__ = ("session_id", "round", "total_size", "blob_digest", "offset", "data", "digest")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOB_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    total_size: int
    blob_digest: str
    offset: int
    data: bytes
    digest: str
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., total_size: _Optional[int] = ..., blob_digest: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., digest: _Optional[str] = ...) -> None: ...

class UploadReply(_message.Message):
    __slots__ = ("received", "complete", "message")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    received: int
    complete: bool
    message: str
    def __init__(self, received: _Optional[int] = ..., complete: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class UploadStatusRequest(_message.Message):
    __slots__ = ("session_id", "round")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class UploadStatusReply(_message.Message):
    __slots__ = ("acked_offset", "total_size", "complete")
    ACKED_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    acked_offset: int
    total_size: int
    complete: bool
    def __init__(self, acked_offset: _Optional[int] = ..., total_size: _Optional[int] = ..., complete: _Optional[bool] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("session_id", "round", "metrics", "profile", "decline_reason")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    DECLINE_REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    round: int
    metrics: _containers.ScalarMap[str, float]
    profile: DeviceProfile
    decline_reason: str
    def __init__(self, session_id: _Optional[str] = ..., round: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., profile: _Optional[_Union[DeviceProfile, _Mapping]] = ..., decline_reason: _Optional[str] = ...) -> None: ...

class ReportReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("session_id", "size")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    size: int
    def __init__(self, session_id: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("received", "seconds")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    received: int
    seconds: float
    def __init__(self, received: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...
