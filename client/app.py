"""A client process: join, then for each planned round download, train, report, upload."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import grpc
import torch

from fedlora import methods
from fedlora.client import distributed
from fedlora.client.hooks import ClientContext, ClientHooks
from fedlora.client.privacy import BudgetExhausted, PrivacyLedger, ledger_path
from fedlora.client.progress import Bars
from fedlora.client.roundstate import RoundStore
from fedlora.client.trainer import train_local
from fedlora.client.transport import Connection, CoordinatorError, CoordinatorLost, TransferFailed
from fedlora.common.config import ClientConfig
from fedlora.common.data import DIRICHLET, FederatedSplit, SplitPlan, split_local
from fedlora.common.evaluate import EvalOptions
from fedlora.common.launch import seconds_since_launch
from fedlora.common.model import AdaptedModel, select
from fedlora.common.tasks import DEFAULT_TASK, get_task
from fedlora.common.tasks.base import Rows, Task, columns_from
from fedlora.common.netstat import SHARED, InterfaceMeter, assess
from fedlora.common.storage import prepare_dir, tree_sha256, write_atomic
from fedlora.common.tls import channel_credentials
from fedlora.common.training import round_seed, steps_per_round
from fedlora.common.wire.blob import Blob, pack, unpack
from fedlora.common.wire.codec import Chain
from fedlora.common.wire.protocol import DEFAULT_CHUNK_BYTES, REPORT_TEST_ACCURACY
from fedlora.common.wire.stats import TransferStats
from fedlora.proto.v1 import fedlora_pb2 as pb

log = logging.getLogger("fedlora.client")

# rows per forward pass of a client's evaluation (how many rows, and answers generated, are the
# run's eval_examples / generate_examples, as for the coordinator's)
CLIENT_EVAL_BATCH = 32

LOCAL = "local"  # the round store of the plan's keep_local tensors (<state_dir>/<id>/local/)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but CUDA is not available")
    return dev


def device_profile(device: torch.device, num_examples: int) -> pb.DeviceProfile:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name, memory = props.name, props.total_memory
    else:
        name = "cpu"
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return pb.DeviceProfile(accelerator=str(device), accelerator_name=name, memory_bytes=memory,
                            threads=torch.get_num_threads(), num_examples=num_examples)


class Client:
    def __init__(self, cfg: ClientConfig):
        self.cfg = cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(distributed.local_device(cfg.device))
        self.ctx = distributed.from_env(self.device)  # torchrun: several processes, one client
        self.state_dir = prepare_dir(cfg.state_dir / cfg.client_id, "state folder")  # before any work
        if cfg.insecure:
            log.warning("connecting in PLAINTEXT (--insecure): the token and updates cross unencrypted")
        creds = None if cfg.insecure else channel_credentials(cfg.ca_cert, cfg.cert, cfg.key)
        self.conn = Connection(cfg.server, creds, no_progress_timeout_s=cfg.no_progress_timeout_s,
                               coordinator_timeout_s=cfg.coordinator_timeout_s,
                               connect_timeout_s=cfg.connect_timeout_s)
        self.meter = InterfaceMeter(cfg.server, declared_shared=cfg.shared_interface)
        self._shared_told = False  # the log has said the interface carried other traffic
        self.bars = Bars.for_stderr()  # a terminal's bars; a log file gets one line per round
        self.am: AdaptedModel | None = None
        self._adapter_key = b""
        self._held: tuple[str, dict[str, torch.Tensor]] | None = None  # (digest, global tensors)
        self._personal = False  # the last plan kept tensors local: this client's model is its own
        self.hooks: ClientHooks | None = None  # the run's method's client half, from its spec

    # ------------------------------------------------------------------ set-up
    @property
    def task(self) -> Task:
        """The run's task; a coordinator that names none predates tasks and trains classifiers."""
        return get_task(self.spec.task or DEFAULT_TASK)

    def _load_data(self, spec: pb.RunSpec, split: FederatedSplit | None) -> Rows:
        """The client's own file, or its shard of ``split`` (the data the coordinator federates)."""
        if self.cfg.data:
            return self.task.load_file(Path(self.cfg.data), self.cfg, spec.label_names)
        if split is None or spec.partition < 0:
            raise ValueError("data: the coordinator federates no data of its own in this run "
                             "(clients bring theirs); pass --data FILE")
        return split.shard(spec.partition)

    def _eval_options(self) -> EvalOptions:
        return spec_eval_options(self.spec)

    def _model_for(self, spec: pb.AdapterSpec) -> AdaptedModel:
        key = spec.SerializeToString(deterministic=True)
        if self.am is None or key != self._adapter_key:  # peft mutates the base: start from disk
            base = self.task.load_base(self.cfg.model or self.spec.model, self.spec.num_labels,
                                       self.spec.seed)
            self.am = AdaptedModel(base, spec, self.task.peft_task_type).to(self.device)
            self._adapter_key = key
        return self.am

    def _prepare_data(self) -> None:
        split = spec_split(self.spec, self.task)  # once: a federated file is hashed and read here
        data = self._load_data(self.spec, split)
        # the run's test split, for methods whose global model lives on the clients (data the
        # coordinator federates only: with their own data, clients have no common test set)
        self.test_data = None if split is None else split.test()
        train_idx, eval_idx = split_local(len(data), self.cfg.local_eval_fraction, self.spec.seed)
        self.train_data, self.eval_data = data.subset(train_idx), data.subset(eval_idx)
        self.tokenizer = self.task.load_tokenizer(self.cfg.model or self.spec.model)

    def follow(self) -> int:
        """A torchrun rank other than 0: train what rank 0 sends, until it says done."""
        kind, _, meta = distributed.receive()
        self.spec = pb.RunSpec.FromString(meta["spec"])
        self._prepare_data()
        log.info("rank %d of %d: following rank 0 (%d training examples)", self.ctx.rank,
                 self.ctx.world, len(self.train_data))
        while True:
            kind, tensors, meta = distributed.receive()
            if kind == distributed.DONE:
                distributed.close()
                return 0
            plan = pb.Plan.FromString(meta["plan"])
            am = self._model_for(plan.adapter)
            am.load_state(tensors)
            am.set_trainable(list(plan.train), list(plan.freeze))
            train_local(am, self.train_data, self.tokenizer, plan.training, self.spec.max_length,
                        round_seed(self.spec.seed, plan.round, self.cfg.client_id), self.device, None,
                        None, self.ctx, task=self.task)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        cfg = self.cfg
        reply = self.conn.join(cfg.client_id, cfg.token, device_profile(self.device, 0))
        self.conn.start_heartbeat()
        self.spec = reply.spec
        if self.ctx is not None:
            distributed.send("spec", {}, {"spec": self.spec.SerializeToString()})
        log.info("joined %s as %s (run %s, strategy %s, partition %d), %.1fs after launch", cfg.server,
                 cfg.client_id, self.spec.run_id, self.spec.strategy, self.spec.partition,
                 seconds_since_launch())
        self._prepare_data()
        profile = device_profile(self.device, len(self.train_data))
        self.hooks = methods.get(self.spec.strategy).client(ClientContext(
            cfg.client_id, self.spec, self.device, self.state_dir, self.tokenizer, self.train_data,
            self._model_for, self.task))
        self.hooks.on_join(profile)
        if cfg.probe_bytes and self.spec.probe_link:  # only when the run plans with link rates
            up, down = self.conn.probe(cfg.probe_bytes, self.spec.chunk_bytes or DEFAULT_CHUNK_BYTES)
            profile.upload_bytes_per_second, profile.download_bytes_per_second = up, down
            log.info("link probe: up %.2f Mbit/s, down %.2f Mbit/s", up * 8e-6, down * 8e-6)
        log.info("interface bytes: %s", self.meter.interface if self.meter.available else
                 f"not measured ({self.meter.reason})")
        self.conn.report(0, {"num_examples": float(len(self.train_data))}, profile)  # rejoins send it too
        log.info("%d training and %d local evaluation examples", len(self.train_data), len(self.eval_data))
        last = 0
        while True:
            task = self.conn.task(last)  # retried, and rejoined, until coordinator_timeout_s
            if task.kind == pb.Task.DONE:
                if task.failed:  # this process ends non-zero: the run it served failed
                    log.error("the run failed: %s", task.message)
                else:
                    log.info("run finished: %s", task.message)
                if self.ctx is not None:
                    distributed.send(distributed.DONE, {}, {})
                    distributed.close()
                if self.am is not None and self._personal:  # its own model: save it, PEFT format
                    self.am.save(self.state_dir / "adapter")
                    log.info("personal adapter saved to %s", self.state_dir / "adapter")
                return 1 if task.failed else 0
            if task.kind == pb.Task.WAIT:
                continue
            try:
                self.play(task.plan)
            except TransferFailed as e:
                log.error("round %d: %s", task.round, e)
            last = task.round

    def play(self, plan: pb.Plan) -> None:
        rnd = plan.round
        ledger = self._ledger(plan.training) if plan.training.dp.enabled else None
        if ledger is not None:  # before any transfer: a round over budget costs nothing
            try:
                eps_after = ledger.check(steps_per_round(plan.training, len(self.train_data)))
            except BudgetExhausted as e:
                log.error("round %d: %s", rnd, e)
                self.conn.report(rnd, {"dp_epsilon": ledger.epsilon()}, decline=str(e))
                return
            log.debug("round %d: DP-SGD, noise %.3f, clip %g, epsilon after this round %.3f", rnd,
                      ledger.noise_multiplier, ledger.clip_norm, eps_after)
        assert self.hooks is not None, "play before join"
        am = self._model_for(plan.adapter)
        t_round = time.perf_counter()
        global_tensors, down = self._global_state(rnd, plan.global_state)
        quiet_from, quiet_t0 = self.meter.read(), time.perf_counter()  # training: no transfer
        keep = set(select(am.names(), plan.keep_local)) if plan.keep_local else set()
        self._personal = bool(keep)
        global_tensors = self.hooks.on_global_state(plan, am, global_tensors)
        am.load_state({k: v for k, v in global_tensors.items() if k not in keep})
        if keep:
            am.load_state(self._kept_before(rnd, am, keep))
        trained = am.set_trainable(list(plan.train), list(plan.freeze))
        terms = "".join(f", {k} {v:g}" for k, v in sorted(plan.training.regularisation.items()))
        log.debug("round %d: training %d tensors on %d examples%s", rnd, len(trained),
                  len(self.train_data), terms)
        after_backward = self.hooks.before_training(plan, am)
        if self.ctx is not None:  # the other ranks train the same model on their rows
            distributed.send(distributed.TRAIN, am.state(), {"plan": plan.SerializeToString()})
        with self.bars.stage(f"round {rnd} training", steps_per_round(plan.training, len(self.train_data)),
                             "steps") as on_step:
            metrics = train_local(am, self.train_data, self.tokenizer, plan.training, self.spec.max_length,
                                  round_seed(self.spec.seed, rnd, self.cfg.client_id), self.device, ledger,
                                  after_backward, self.ctx, task=self.task,
                                  checkpointing=self.cfg.checkpointing(self.device), on_step=on_step)
        if ledger is not None:
            ledger.record(steps_per_round(plan.training, len(self.train_data)))
            metrics.update(dp_epsilon=ledger.epsilon(), dp_delta=ledger.delta,
                           dp_noise_multiplier=ledger.noise_multiplier, dp_clip_norm=ledger.clip_norm)
        if keep:
            state = am.state()
            self._store(LOCAL).save(rnd, {k: state[k] for k in keep})
        score = self.task.evaluate(am.model, self.tokenizer, self.eval_data, self._eval_options(),
                                   self.device)
        state = am.state()
        update = {n: state[n] for n in select(am.names(), plan.upload)}
        if plan.upload_kind == "delta":
            update = {n: t - global_tensors[n].to(t.dtype) for n, t in update.items()}
        update.update(self.hooks.upload_extras(plan, am))
        if REPORT_TEST_ACCURACY in plan.report and self.test_data is not None:
            test = self.task.evaluate(am.model, self.tokenizer, self.test_data, self._eval_options(),
                                      self.device)
            metrics.update(test_accuracy=test.accuracy, test_loss=test.loss)
        blob = self._pack_upload(rnd, update, {"round": rnd, "client": self.cfg.client_id,
                                               "num_examples": len(self.train_data),
                                               "upload_kind": plan.upload_kind or "weights"},
                                 plan.upload_codec)
        write_atomic(self.state_dir / "last-upload.safetensors", blob.data)  # what was sent, as sent
        before = self.meter.read()
        quiet = self.meter.quiet_metrics(self.meter.delta(quiet_from, before),
                                         time.perf_counter() - quiet_t0)
        with self.bars.stage(f"round {rnd} upload", blob.size) as on_bytes:
            up = self.conn.upload(rnd, blob, self.spec.chunk_bytes or DEFAULT_CHUNK_BYTES, on_bytes)
        iface_up = self.meter.delta(before, self.meter.read())
        metrics.update({f"local_{k}": float(v) for k, v in score.extra.items()})  # e.g. perplexity
        metrics.update(local_accuracy=score.accuracy, local_loss=score.loss,
                       num_examples=float(len(self.train_data)),
                       client_down_payload_bytes=float(down.payload_bytes),
                       client_down_seconds=down.seconds, client_up_seconds=up.seconds,
                       client_up_payload_bytes=float(up.payload_bytes),
                       round_seconds=time.perf_counter() - t_round)
        metrics.update(quiet)
        for d, stats, counters in (("down", down, down.iface), ("up", up, iface_up)):
            metrics.update(self.meter.report_metrics(d, counters, stats.protobuf_bytes))
            self._tell_shared(d, metrics)
        self.conn.report(rnd, metrics, self.hooks.round_profile(plan, metrics, down, up))
        log.info("round %d: loss %.4f%s, local accuracy %.4f; down %s; up %s; round %.1fs%s", rnd,
                 metrics["train_loss"], terms, score.accuracy, _moved(down) if down.payload_bytes else "none (global state held)",
                 _moved(up), time.perf_counter() - t_round,
                 "" if ledger is None else f"; DP-SGD epsilon {metrics['dp_epsilon']:.3f}")

    def _tell_shared(self, direction: str, metrics: dict[str, float]) -> None:
        """Logs, once, a transfer whose interface carried other traffic (the coordinator judges
        the same report alike and records no interface bytes for it): the operator learns
        that this host's figures are not the client's own, and why."""
        if self._shared_told or not self.meter.available:  # a static cause was logged at join
            return
        _, verdict = assess(direction, metrics)
        if verdict.kind == SHARED:
            log.warning("interface %s is shared (%s while %sloading): its bytes are not recorded "
                        "as this client's", self.meter.interface, verdict.reason, direction)
            self._shared_told = True

    def _ledger(self, t: pb.LocalTraining) -> PrivacyLedger:
        """The run's ledger: a resumed run (same run id) goes on from it, a new run starts its
        own next to the old ones."""
        return PrivacyLedger.open(ledger_path(self.state_dir, self.spec.run_id), self.spec.run_id, t.dp,
                                  len(self.train_data), t.batch_size, steps_per_round(t, len(self.train_data)),
                                  self.spec.rounds)

    def _store(self, name: str) -> RoundStore:
        return RoundStore(self.state_dir / name, self.spec.run_id)

    def _kept_before(self, rnd: int, am: AdaptedModel, keep: set[str]) -> dict[str, torch.Tensor]:
        """The plan's ``keep_local`` tensors as they stood before round ``rnd`` (kept by round,
        so a redone round starts from the same ones); the first time, the adapter's own, kept
        as round 0 before any training can change them."""
        store = self._store(LOCAL)
        state = store.before(rnd)
        if state is None:
            state = {k: v for k, v in am.state().items() if k in keep}
            store.save(0, state)
        return {k: v for k, v in state.items() if k in keep}

    def _pack_upload(self, rnd: int, update: dict[str, torch.Tensor], header: dict[str, object],
                     codec: pb.Codec) -> Blob:
        """Packs the update with the plan's codec. Stateful stages (top-k's error-feedback
        residual) carry over from round to round by round number: they start from their state
        as of the round before ``rnd``, kept like ``keep_local``, whatever was encoded since."""
        chain = Chain.parse(list(codec.stages))
        store = self._store("codec-" + hashlib.sha256("|".join(chain.specs()).encode()).hexdigest()[:12])
        chain.restore(store.before(rnd) or {})
        blob = pack(update, header, chain)
        state = chain.state()
        if state:  # a stateless chain keeps nothing
            store.save(rnd, state)
        return blob

    def _global_state(self, rnd: int, ref: pb.BlobRef):
        if self._held is not None and self._held[0] == ref.digest:  # a redone round: same state
            return self._held[1], TransferStats()
        before = self.meter.read()
        with self.bars.stage(f"round {rnd} download", ref.size) as on_bytes:
            data, stats = self.conn.download(rnd, ref, on_bytes)
        stats.iface = self.meter.delta(before, self.meter.read())
        tensors, _meta = unpack(data)
        self._held = (ref.digest, tensors)
        return tensors, stats


def _moved(stats: TransferStats) -> str:
    return f"{stats.payload_bytes} B ({stats.protobuf_bytes} protobuf) in {stats.seconds:.2f}s"


def spec_split(spec: pb.RunSpec, task: Task) -> FederatedSplit | None:
    """The coordinator's split of the data it federates (the built-in set, or a file this
    client reads at the same path and checks by digest); None where clients bring their own."""
    if not spec.dataset:
        return None
    plan = SplitPlan(spec.num_partitions, spec.partition_scheme or DIRICHLET,
                     spec.dirichlet_alpha, spec.test_fraction, spec.seed, spec.partition_column)
    columns = None
    if spec.dataset_sha256:  # a file: the coordinator's, or nothing
        path = Path(spec.dataset)
        if not path.exists():
            raise ValueError(f"data: the run federates {path}, which this machine does not "
                             f"have; pass --data FILE to train on a file of your own")
        if tree_sha256(path) != spec.dataset_sha256:
            raise ValueError(f"data: {path} is not the file the coordinator federates (sha256 "
                             f"differs); pass --data FILE to train on a file of your own")
        columns = columns_from(spec.columns)
    return task.federated_split(spec.dataset, plan, columns, spec.label_names)


def spec_eval_options(spec: pb.RunSpec) -> EvalOptions:
    """A client's evaluations (its hold-out, and the test split where the plan asks) are
    bounded as the coordinator's are: by the run's settings, which the spec carries."""
    return EvalOptions(CLIENT_EVAL_BATCH, spec.max_length, spec.generate_examples,
                       spec.max_new_tokens or EvalOptions.max_new_tokens, spec.eval_examples)


def run_client(cfg: ClientConfig) -> int:
    client = Client(cfg)
    if client.ctx is not None and not client.ctx.leader:
        return client.follow()
    try:
        return client.run()
    except CoordinatorLost as e:
        log.error("%s", e)
        return 3
    except CoordinatorError as e:  # CallRefused, or a transfer outside a round (the link probe)
        log.error("%s", e)
        return 2
    except grpc.RpcError as e:
        log.error("gRPC call failed: %s: %s", e.code().name, e.details())
        return 2
    finally:
        client.conn.close()
