"""One validated configuration object per process, from a YAML/JSON file plus CLI flags.

Every field has a default that gives the README demo, so ``fedlora run`` with no file works.
Errors name the field (``training.learning_rate: Input should be greater than 0``) and are
raised before anything starts, as :class:`ConfigError`, which the CLI prints as one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedlora import methods
from fedlora.common.data import BUILTIN_SETS, COLUMN, DIRICHLET, OWN, SplitPlan
from fedlora.common.evaluate import EvalOptions
from fedlora.common.tasks import DEFAULT_TASK, TASKS, get_task
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.protocol import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, MIN_CHUNK_BYTES


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AdapterConfig(Strict):
    rank: int = Field(8, ge=1, le=4096)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)
    modules_to_save: list[str] = Field(default_factory=lambda: ["classifier"])


class DPConfig(Strict):
    """DP-SGD on the clients. With ``noise_multiplier`` 0 the noise is derived so that the run's
    rounds spend exactly ``target_epsilon``; with both set, clients stop at the target."""

    enabled: bool = False
    noise_multiplier: float = Field(0.0, ge=0)
    clip_norm: float = Field(1.0, gt=0)
    target_epsilon: float = Field(0.0, ge=0)
    delta: float = Field(1e-5, gt=0, lt=1)

    @model_validator(mode="after")
    def _noise_or_target(self) -> "DPConfig":
        if self.enabled and self.noise_multiplier <= 0 and self.target_epsilon <= 0:
            raise ValueError("dp needs noise_multiplier > 0 or target_epsilon > 0")
        return self


class TrainingConfig(Strict):
    epochs: int = Field(1, ge=1)
    max_steps: int = Field(30, ge=0, description="0 = run the epochs in full")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(5e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    max_grad_norm: float = Field(1.0, ge=0)
    dp: DPConfig = Field(default_factory=DPConfig)


class DataConfig(Strict):
    dataset: str = Field("trec", description="'trec' (built-in), or a CSV/JSON/JSONL/Parquet file "
                                             "or save_to_disk folder")
    text_column: str = Field("text", description="classification: the input text's column")
    label_column: str = Field("label", description="classification: the label's column")
    prompt_column: str = Field("prompt", description="causal-lm: the instruction's column")
    response_column: str = Field("response", description="causal-lm: the answer's column")
    messages_column: str = Field("messages", description="causal-lm: a chat-format list of "
                                 "{role, content}, the last the assistant's (instead of prompt/response)")
    partition: Literal["dirichlet", "iid", "column", "own"] | None = Field(
        None, description="how the coordinator's data reaches the clients: 'dirichlet' (label "
        "skew by dirichlet_alpha), 'iid' or 'column' (grouped by partition_column's values) "
        "split it over them; 'own': clients bring their own files, the coordinator's file is "
        "the test split. Unset: 'dirichlet' for the built-in set, 'own' for a file ('fedlora "
        "run', whose clients have no files, makes it 'dirichlet')")
    partition_column: str = Field("", description="partition 'column': the column whose values "
                                  "group rows into clients (a user, a source)")
    dirichlet_alpha: float = Field(0.5, gt=0)
    test_fraction: float = Field(0.1, gt=0, lt=1)
    max_length: int = Field(48, ge=8, le=4096, description="tokens per example (the task's "
                            "default when unset: classification 48, causal-lm 128)")


    @model_validator(mode="after")
    def _partition(self) -> "DataConfig":
        if self.partition == COLUMN and not self.partition_column:
            raise ValueError("partition_column: partition 'column' needs the column's name")
        if self.partition == OWN and self.dataset in BUILTIN_SETS:
            raise ValueError(f"partition: 'own' needs a data file; {self.dataset!r} is the "
                             f"built-in set, split over the clients")
        return self

    def split_plan(self, num_parts: int, seed: int) -> SplitPlan:
        """The run's split, with the unset ``partition`` resolved."""
        scheme = self.partition or (DIRICHLET if self.dataset in BUILTIN_SETS else OWN)
        return SplitPlan(num_parts, scheme, self.dirichlet_alpha, self.test_fraction, seed,
                         self.partition_column)


# Client ids name files (certificates, personal state) and appear in logs: letters, digits,
# ``_ . -``, not starting with a dot (so never ``.`` or ``..``), at most CLIENT_ID_MAX long.
CLIENT_ID_MAX = 64
CLIENT_ID_PATTERN = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,%d}$" % (CLIENT_ID_MAX - 1)
_CLIENT_ID = re.compile(CLIENT_ID_PATTERN)


def valid_client_id(cid: str) -> bool:
    """Whether ``cid`` is a safe client id (the rule config files and Join share)."""
    return _CLIENT_ID.fullmatch(cid) is not None


class ClientEntry(Strict):
    id: str = Field(min_length=1, max_length=CLIENT_ID_MAX, pattern=CLIENT_ID_PATTERN)
    token: str = ""


class CodecConfig(Strict):
    upload: list[str] = Field(default_factory=lambda: ["zstd:3"])
    download: list[str] = Field(default_factory=lambda: ["zstd:3"])
    upload_delta: bool = Field(True, description="clients send update - global where the strategy allows")

    @field_validator("upload", "download")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        Chain.parse(v)  # raises ValueError naming the bad stage
        return v

    @field_validator("download")
    @classmethod
    def _no_topk_down(cls, v: list[str]) -> list[str]:
        if any(s.split(":")[0] == "topk" for s in v):
            raise ValueError("topk needs error feedback, which only the uploading client keeps")
        return v


class TLSConfig(Strict):
    """The coordinator's TLS: its certificate and key; with ``client_ca``, mutual TLS, and a
    client must present a certificate whose common name is its client id."""

    cert: str = ""
    key: str = ""
    client_ca: str = ""

    @model_validator(mode="after")
    def _pair(self) -> "TLSConfig":
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert and key go together")
        if self.client_ca and not self.cert:
            raise ValueError("client_ca (mutual TLS) needs cert and key")
        return self


class ServerConfig(Strict):
    # method sections arrive as extra keys and are validated by the methods' own models
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    metrics_port: int = Field(
        0, ge=0, le=65535, description="serve Prometheus metrics at http://<host>:<metrics_port>"
        "/metrics (plain HTTP, on the gRPC port's host); 0 = off")
    tls: TLSConfig = Field(default_factory=TLSConfig)
    insecure: bool = Field(False, description="serve plaintext (logged as a warning); else TLS is required")
    run_dir: Path = Path("runs/latest")
    probe_links: bool | None = Field(
        None, description="clients probe their link at join (seconds before round 1): None = "
        "only where the method plans with link rates (legend); true/false = always/never")
    tensorboard: bool = Field(True, description="write TensorBoard event files of the rounds "
                              "in <run_dir>/tensorboard/ (`tensorboard --logdir runs/`)")
    strategy: str = Field(methods.DEFAULT, description="the federated method (fedlora.methods)")
    model: str = Field("default", description="'default' (the task's built-in base: "
                       "all-MiniLM-L6-v2; causal-lm: SmolLM2-135M-Instruct GGUF), a local HF "
                       "folder, or (causal-lm) a .gguf file")
    task: str = Field(DEFAULT_TASK, description="what the model learns: " + ", ".join(TASKS))
    rounds: int = Field(5, ge=1)
    clients: int | list[ClientEntry] = Field(4, description="a count, or ids with tokens")
    token: str = Field("", description="shared token when `clients` is a count (open test runs "
                                        "only: any holder may join as any id; use per-client "
                                        "tokens from `fedlora tokens`, or mutual TLS)")
    open_run: bool = Field(
        False, description="serve without client credentials (neither a distinct token per "
                           "client nor mutual TLS): anyone reaching the port may join as any id; "
                           "for tests, logged as a warning")
    stream_idle_s: float = Field(
        60.0, gt=0, description="a stream (upload, probe, download) that moves no message for "
                                "this long is cancelled, freeing its thread (a 3 MiB chunk on a "
                                "1 Mbit/s link takes 25 s)")
    fraction: float = Field(1.0, gt=0, le=1)
    min_clients: int = Field(2, ge=1)
    deadline_s: float = Field(600.0, gt=0)
    join_timeout_s: float = Field(600.0, gt=0)
    round_retries: int = Field(1, ge=0)
    client_timeout_s: float = Field(
        120.0, ge=1.0,
        description="a client silent this long (no call, no heartbeat) is given up: not waited "
                    "for in its round, not planned until it joins again, and its id is free for "
                    "a new process")
    seed: int = 0
    chunk_bytes: int = Field(DEFAULT_CHUNK_BYTES, ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES)
    max_upload_factor: float = Field(
        4.0, ge=1.0, description="an upload may be at most this times its raw tensor size"
    )
    max_client_examples: int = Field(
        10_000_000, ge=1,
        description="the most training examples one client may declare: its aggregation weight")
    spool_bytes: int = Field(
        16 << 20, ge=0, description="uploads larger than this are put together on disk, in "
        "<run_dir>/spool/, rather than in memory (files removed once folded or refused)")
    threads: int = Field(0, ge=0, description="torch threads for evaluation; 0 = torch default")
    device: str = "cpu"
    eval_batch_size: int = Field(128, ge=1)
    generate_examples: int = Field(64, ge=0, description="causal-lm: test examples answered by "
                                   "greedy decoding for exact match, each evaluation (0 = loss only)")
    max_new_tokens: int = Field(8, ge=1, le=4096, description="causal-lm: longest generated answer")
    eval_examples: int = Field(0, ge=0, description="the coordinator's evaluations read the first "
                               "this many test examples (0 = all): a causal LM's forward pass is "
                               "costly on a CPU")
    evaluate_every: int = Field(
        1, ge=1, description="the coordinator evaluates the global model after every this-many "
        "rounds and always after the last (long runs); the other rounds are recorded without "
        "test figures. Evaluations run beside the next round, never holding it up")
    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        get_task(v)  # raises ValueError listing the known tasks
        return v

    @model_validator(mode="after")
    def _task_defaults(self) -> "ServerConfig":
        """Fields the run leaves unset take its task's defaults (LoRA targets, the head trained in
        full, sequence length): a causal LM has no ``query`` module and no ``classifier``."""
        task = get_task(self.task)
        if "target_modules" not in self.adapter.model_fields_set:
            self.adapter.target_modules = list(task.target_modules)
        if "modules_to_save" not in self.adapter.model_fields_set:
            self.adapter.modules_to_save = list(task.modules_to_save)
        if "max_length" not in self.data.model_fields_set:
            self.data.max_length = task.max_length
        return self

    def eval_options(self) -> EvalOptions:
        return EvalOptions(self.eval_batch_size, self.data.max_length, self.generate_examples,
                           self.max_new_tokens, self.eval_examples)

    @model_validator(mode="after")
    def _consistent(self) -> "ServerConfig":
        n = self.clients if isinstance(self.clients, int) else len(self.clients)
        if n < 1:
            raise ValueError("clients: at least one client is needed")
        if self.metrics_port and self.metrics_port == self.port:
            raise ValueError(f"metrics_port: {self.metrics_port} is the gRPC port")
        if self.min_clients > n:
            raise ValueError(f"min_clients ({self.min_clients}) exceeds the number of clients ({n})")
        if not isinstance(self.clients, int):
            ids = [c.id for c in self.clients]
            if len(set(ids)) != len(ids):
                raise ValueError("clients: duplicate client id")
        return self

    @model_validator(mode="after")
    def _method_sections(self) -> "ServerConfig":
        """Each method's own config section is a top-level key of the file, validated by the
        model the method registers (imported on first use: the method packages import this
        module); the method's checks run on the whole."""
        method = methods.get(self.strategy)
        sections = methods.config_sections()
        extra = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key in extra:
            if key not in sections:
                raise ValueError(f"{key}: Extra inputs are not permitted")
        for key, model in sections.items():
            value = extra.get(key, {})
            if not isinstance(value, model):
                try:
                    value = model.model_validate(value)
                except ValidationError as e:
                    raise ValueError(format_validation_error(e, prefix=key)) from None
                extra[key] = value
            check = getattr(value, "check", None)
            if check is not None:
                check(self)
        if method.no_dp and self.training.dp.enabled:
            raise ValueError(f"training.dp: DP-SGD is not supported with {method.name} ({method.no_dp})")
        if method.check is not None:
            method.check(self)
        return self

    def section(self, key: str) -> Any:
        """A method's config section by its key (also reachable as an attribute)."""
        return getattr(self, key)

    def transport_error(self) -> str | None:
        """Why this config cannot serve (checked when the coordinator starts, so `fedlora run`
        can fill in the certificates it makes first)."""
        if not self.insecure and not self.tls.cert:
            return ("tls: the coordinator serves TLS: set tls.cert and tls.key (make them with "
                    "`fedlora certs`), or pass --insecure for plaintext")
        return None

    def auth_error(self) -> str | None:
        """Why this config would let a client join as another (checked when the coordinator
        starts, with :meth:`transport_error`): credentials are mutual TLS (the certificate names
        the id) or a distinct non-empty token per client; without either, only an open run."""
        if self.open_run or self.tls.client_ca:
            return None
        tokens = [e.token for e in self.client_entries()]
        if all(tokens) and len(set(tokens)) == len(tokens):
            return None
        return ("clients: no client credentials: give each client its own token (clients: a list "
                "of {id, token}; make one with `fedlora tokens`) or use mutual TLS (tls.client_ca); "
                "a shared `token` lets any client join as another; open_run: true (--open-run) "
                "serves without, for tests")

    def client_entries(self) -> list[ClientEntry]:
        if isinstance(self.clients, int):
            return [ClientEntry(id=f"client-{i}", token=self.token) for i in range(self.clients)]
        return list(self.clients)


class ClientConfig(Strict):
    server: str = "127.0.0.1:50051"
    client_id: str = Field("client-0", max_length=CLIENT_ID_MAX, pattern=CLIENT_ID_PATTERN)
    token: str = ""
    ca_cert: str = Field("", description="CA that signed the coordinator's certificate (TLS)")
    cert: str = Field("", description="this client's certificate, for mutual TLS")
    key: str = Field("", description="its private key")
    insecure: bool = Field(False, description="plaintext to the coordinator (logged as a warning)")
    model: str = Field("", description="local folder of the run's model; '' = as the run says")
    data: str = Field("", description="this client's own CSV/JSON/JSONL/Parquet file or save_to_disk folder; '' = its built-in shard")
    text_column: str = "text"
    label_column: str = "label"
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str = "messages"
    state_dir: Path = Path("client-state")
    threads: int = Field(0, ge=0, description="torch threads; 0 = torch default")
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:N'")
    local_eval_fraction: float = Field(0.1, ge=0, lt=1)
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto", description="recompute activations in backward to save memory: 'auto' = on CUDA")
    no_progress_timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(120.0, gt=0, description="first join: how long to wait for the coordinator to come up")
    coordinator_timeout_s: float = Field(
        600.0, ge=1.0,
        description="after joining: give up (exit 3) when the coordinator has not answered for "
                    "this long; until then it is retried with backoff and rejoined")
    probe_bytes: int = Field(256 << 10, ge=0, le=256 << 20,
                             description="link probe size each way at join; 0 = no probe")
    shared_interface: bool = Field(
        False, description="this host's network interface carries other traffic too (e.g. a "
                           "machine that does other work): its byte counters are not measured as "
                           "this client's; unset, each transfer is judged by its counters")

    def checkpointing(self, device) -> bool:
        return self.gradient_checkpointing == "on" or (
            self.gradient_checkpointing == "auto" and device.type == "cuda")

    @model_validator(mode="after")
    def _transport(self) -> "ClientConfig":
        if not self.insecure and not self.ca_cert:
            raise ValueError("ca_cert: the coordinator is reached over TLS: pass --ca-cert (and "
                             "--cert/--key for mutual TLS), or --insecure for plaintext")
        if bool(self.cert) != bool(self.key):
            raise ValueError("cert: cert and key go together")
        return self


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value``; the value is parsed as YAML so numbers, lists and booleans work."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(cls: type[Strict], path: str | Path | list[str | Path] | None,
                overrides: dict[str, Any]) -> Any:
    """Reads ``path`` (YAML or JSON; a list: each file's top-level keys over the previous
    ones', e.g. a run config and the ``clients`` of ``fedlora tokens``), applies dotted
    overrides, validates."""
    tree: dict[str, Any] = {}
    for p in ([] if not path else [path] if isinstance(path, (str, Path)) else path):
        tree.update(_read_config(Path(p)))
    for key, value in overrides.items():
        if value is not None:
            _set_path(tree, key, value)
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def _read_config(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p}: not valid YAML/JSON: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config file {p}: top level must be a mapping")
    return tree


def format_validation_error(e: ValidationError, prefix: str = "") -> str:
    """``field.path: message`` per error; with ``prefix``, the bare list under that key."""
    msgs = []
    for err in e.errors():
        loc = ".".join(str(p) for p in ([prefix] if prefix else []) + list(err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        msgs.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(msgs) if prefix else "config error: " + "; ".join(msgs)


def dump_config(cfg: BaseModel) -> str:
    return json.dumps(cfg.model_dump(mode="json"), indent=2)


REDACTED = "<redacted>"


def public_config(cfg: "ServerConfig") -> str:
    """The config as every client may see it (the run spec) and the run folder keeps: client
    tokens replaced, or a client would learn the others' tokens."""
    tree = cfg.model_dump(mode="json")
    if tree.get("token"):
        tree["token"] = REDACTED
    if isinstance(tree.get("clients"), list):
        tree["clients"] = [dict(c, token=REDACTED if c.get("token") else "") for c in tree["clients"]]
    return json.dumps(tree, indent=2)
