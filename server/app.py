"""The coordinator process: loads the model and test data, serves gRPC (and, with
``metrics_port``, Prometheus metrics), runs the rounds, writes the run folder (metrics,
summary, final adapter, the journal it resumes from)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from fedlora import methods
from fedlora.common.channel import grpc_options
from fedlora.common.config import ConfigError, DataConfig, ServerConfig, public_config
from fedlora.common.data import BUILTIN_SETS, SplitPlan
from fedlora.common.model import AdaptedModel
from fedlora.common.storage import (StorageError, atomic_dir, prepare_dir, reason, tree_sha256,
                                    write_atomic)
from fedlora.common.tasks import Task, get_task
from fedlora.common.tasks.base import COLUMN_FIELDS
from fedlora.common.wire.protocol import MAX_MESSAGE_BYTES
from fedlora.proto.v1 import fedlora_pb2 as pb
from fedlora.server.admission import fixed_counts
from fedlora.server.arenas import cap_arenas
from fedlora.server.engine import Engine
from fedlora.server.evaluation import EvalCopy
from fedlora.server.eventfiles import attach
from fedlora.server.journal import Journal
from fedlora.server.metrics import Metrics
from fedlora.server.runlog import RunLog, read_records, summarize
from fedlora.server.rpcserver import RpcServer
from fedlora.common.tls import server_credentials

log = logging.getLogger("fedlora.server")


def spec_data_fields(data: DataConfig, plan: SplitPlan, federated: bool) -> dict[str, Any]:
    """The spec's account of the data the coordinator federates ("" where clients bring their
    own): the built-in set's name, or a file's absolute path with how it is read and its digest
    (a client that finds another file at that path refuses to train on it); how it is split."""
    if not federated:
        return {"dataset": ""}
    fields: dict[str, Any] = {"dataset": data.dataset, "partition_scheme": plan.scheme,
                              "partition_column": plan.column}
    if data.dataset not in BUILTIN_SETS:
        path = Path(data.dataset).resolve()
        fields.update(dataset=str(path), dataset_sha256=tree_sha256(path),
                      columns={k: getattr(data, k) for k in COLUMN_FIELDS})
    return fields


def serve(cfg: ServerConfig) -> int:
    """Runs the coordinator to the end of the run; returns its exit code. The metrics port is
    bound first, with the config checks: a busy one fails before any work or any write."""
    if (why := cfg.transport_error() or cfg.auth_error()) is not None:
        raise ConfigError(f"config error: {why}")
    metrics = Metrics()  # counted always, served with metrics_port; fed by the run log
    if cfg.metrics_port:  # on the gRPC port's host: whoever may reach the coordinator may watch it
        metrics.serve(cfg.host, cfg.metrics_port)
    try:
        return _serve(cfg, metrics)
    finally:
        metrics.close()


def _serve(cfg: ServerConfig, metrics: Metrics) -> int:
    cls = methods.get(cfg.strategy).strategy  # the name was checked when the config loaded
    credentials = (server_credentials(cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca)
                   if cfg.tls.cert else None)  # read now: a missing file fails before any work
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cap_arenas()  # before the handler threads start: their freed buffers stay reusable
    journal = Journal(prepare_dir(cfg.run_dir, "run folder"))
    resumed = journal.open(cfg)  # refuses a finished run or a changed config, before any write
    # a read-only, misplaced or full folder stops us here (exit 2)
    runlog = RunLog(cfg.run_dir, keep=(resumed.records_bytes, resumed.records_count) if resumed else (0, 0))
    events = attach(runlog) if cfg.tensorboard else None  # before any record: see eventfiles.py
    runlog.observers.append(metrics.observe)
    write_atomic(cfg.run_dir / "config.json", public_config(cfg) + "\n")

    task = get_task(cfg.task)
    entries = cfg.client_entries()
    plan = cfg.data.split_plan(len(entries), cfg.seed)
    split = task.federated_split(cfg.data.dataset, plan, cfg.data)
    if split is not None:
        dataset, test = split.dataset, split.test()
        shard_sizes = [len(s) for s in split.shards]
    else:  # clients bring their own data; the coordinator's file is the test set
        dataset = test = task.load_file(Path(cfg.data.dataset), cfg.data)
        shard_sizes = []
    tokenizer = task.load_tokenizer(cfg.model)
    model = AdaptedModel(task.load_base(cfg.model, len(dataset.label_names), cfg.seed),
                         cls.adapter_spec(cfg), task.peft_task_type).to(cfg.device)
    strategy = cls(cfg, model)
    if resumed is not None:
        strategy.restore(journal.state(resumed), resumed.meta)
        runlog.write("resume", completed=resumed.completed, round=resumed.completed + 1)
        log.info("resuming run %s in %s after round %d of %d", journal.run_id, cfg.run_dir,
                 resumed.completed, cfg.rounds)
    else:
        journal.commit(0, *strategy.state(), runlog.sync())

    def checkpoint(rnd: int, pending: dict[str, Any] | None) -> None:
        try:
            journal.commit(rnd, *strategy.state(), runlog.sync(), pending=pending)
        except StorageError as e:  # as for a refused record: the run ends with its reason
            runlog.fail(f"run folder {cfg.run_dir}: cannot write the journal: {e.why}")

    spec = pb.RunSpec(
        run_id=journal.run_id, strategy=cfg.strategy, model=cfg.model, task=task.name,
        num_labels=len(dataset.label_names), rounds=cfg.rounds, seed=cfg.seed,
        num_partitions=len(entries), dirichlet_alpha=cfg.data.dirichlet_alpha,
        test_fraction=cfg.data.test_fraction,
        max_length=cfg.data.max_length, **spec_data_fields(cfg.data, plan, split is not None),
        chunk_bytes=cfg.chunk_bytes, label_names=dataset.label_names,
        config_json=public_config(cfg), adapter=cls.adapter_spec(cfg),
        eval_examples=cfg.eval_examples, generate_examples=cfg.generate_examples,
        max_new_tokens=cfg.max_new_tokens,
        probe_link=cls.needs_link_rates if cfg.probe_links is None else cfg.probe_links,
    )
    log.info("model %s, strategy %s, %d test examples, shards %s", task.model_source(cfg.model),
             cfg.strategy, len(test), shard_sizes)

    evaluation = EvalCopy(model, strategy.moving_tensors)  # the one extra model: its cost there

    def snapshot():
        """The global model now, on the evaluation copy; what scores it (beside the next round)."""
        copy = evaluation.take()
        return lambda: task.evaluate(copy.model, tokenizer, test, cfg.eval_options(), cfg.device)

    engine = Engine(cfg, strategy, spec, runlog, snapshot,
                    completed=resumed.completed if resumed else 0, checkpoint=checkpoint,
                    pending=resumed.pending if resumed else None,
                    shard_sizes=shard_sizes,  # counts a resumed run fixed, from its kept records:
                    fixed_counts=fixed_counts(read_records(runlog.metrics_path)) if resumed else None)
    runlog.on_error = engine.fail  # a disk that fills mid-run ends the run, with its reason
    metrics.count_connected(engine.sessions.connected)
    server = RpcServer(engine, metrics, cfg.stream_idle_s, server_options())
    if cfg.open_run:
        log.warning("OPEN RUN (open_run): clients are not authenticated; anyone reaching the port "
                    "may join as any client id")
    if credentials is None:
        log.warning("serving PLAINTEXT (--insecure): tokens and updates cross the network unencrypted")
    port = server.add_port(f"{cfg.host}:{cfg.port}", credentials)
    if port == 0:
        server.stop(None)
        raise ConfigError(f"config error: port: cannot bind {cfg.host}:{cfg.port}")
    server.start()
    server.serving(True)
    address = f"{cfg.host}:{port}"
    runlog.write_json("coordinator.json", {"address": address, "pid": os.getpid()})
    log.info("coordinator listening on %s (%s; run folder %s)", address,
             "plaintext" if credentials is None else
             "mutual TLS: client certificates must name their client id" if cfg.tls.client_ca else "TLS",
             cfg.run_dir)

    def on_signal(signum, _frame):
        engine.stop(f"interrupted by signal {signal.Signals(signum).name}")

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    t0 = time.time()
    code = engine.run()
    adapter_dir = None
    if runlog.error:  # the folder is full or gone: what room is left is the summary's
        log.warning("adapter and personal state not saved: the run folder cannot be written")
    else:
        try:
            adapter_dir = _save_results(cfg, engine, strategy, tokenizer, dataset.label_names, task)
        except (OSError, StorageError) as e:
            runlog.fail(f"run folder {cfg.run_dir}: cannot save the results: "
                        f"{e.why if isinstance(e, StorageError) else reason(e)}")
            code = 1
    summary = summarize(read_records(runlog.metrics_path))
    summary.update({
        "status": "failed" if code else "complete", "error": engine.error or runlog.error or None,
        "strategy": cfg.strategy, "rounds_requested": cfg.rounds, "clients": len(entries),
        "adapter": str(adapter_dir) if adapter_dir else None,
        "elapsed_seconds": round(time.time() - t0, 3), "label_names": dataset.label_names,
    })
    where = f"summary in {cfg.run_dir / 'summary.json'}"
    try:
        runlog.write_json("summary.json", summary)
    except StorageError as e:  # the run's records up to the fault are in metrics.jsonl
        log.error("summary not written: %s", e.why)
        where, code = f"no summary ({e.why}); records up to the fault in {runlog.metrics_path}", code or 1
    if not code and engine.completed >= cfg.rounds:
        journal.finish()
    _release_clients(engine, grace_s=10.0)
    server.serving(False)
    server.stop(grace=2.0)
    if events is not None:
        events.close()
    runlog.close()
    log.info("run %s: %s; %s", "failed" if code else "complete",
             summary["error"] or f"final accuracy {summary['final_accuracy']}", where)
    return code


def server_options() -> list[tuple[str, int]]:
    """No message the protocol sends is larger than a chunk and its fields: anything bigger is
    refused by gRPC (RESOURCE_EXHAUSTED) before it is buffered, instead of at 4 MiB."""
    return grpc_options() + [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]


def _save_results(cfg: ServerConfig, engine: Engine, strategy, tokenizer, label_names: list[str],
                  task: Task) -> Path | None:
    """Personal state and the final adapter, each folder written whole or not at all; returns
    the adapter folder (None when the coordinator holds no global model to save)."""
    personal = strategy.personal_state()
    if personal:  # per-client tensors the coordinator ends with (personalised methods)
        from safetensors.torch import save_file

        with atomic_dir(cfg.run_dir / "personal") as folder:
            for cid, tensors in personal.items():
                save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / f"{cid}.safetensors"))
    if not (engine.completed > 0 and strategy.server_evaluates):
        return None
    adapter_dir = cfg.run_dir / "adapter"
    with atomic_dir(adapter_dir) as folder:
        strategy.save_adapter(folder)
        tokenizer.save_pretrained(str(folder))
        (folder / "fedlora.json").write_text(json.dumps(
            {"base_model": task.model_source(cfg.model), "label_names": label_names,
             "num_labels": len(label_names), "seed": cfg.seed, "strategy": cfg.strategy,
             "task": task.name},
            indent=2) + "\n")
    return adapter_dir


def _release_clients(engine: Engine, grace_s: float) -> None:
    """Gives long-polling clients a moment to hear DONE before the port closes."""
    time.sleep(min(grace_s, 1.5))


def address_file(run_dir: Path) -> Path:
    return run_dir / "coordinator.json"
