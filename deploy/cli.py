"""The ``fedlora`` command: ``server``, ``client`` and ``run`` (a local cluster), and the tools
around them (``certs``, ``tokens``, ``health``, ``shape``, ``report``) and the trained model's
(``export``, ``generate``).

Flags are shortcuts for config fields; ``--set key.sub=value`` reaches any field; a config
file (YAML or JSON) gives the base. Bad configuration ends the command with one line naming
the field and exit code 2; so does a folder it cannot write (read-only, a file in the way,
full), naming the path.
"""

from __future__ import annotations

import os
import sys

# Libraries' own progress bars (transformers' GGUF dequantisation) are noise in a log file. tqdm
# reads this once, when it is first imported, so it is set before any import that may bring it.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_DISABLE", "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import warnings  # noqa: E402
from typing import Any  # noqa: E402

from fedlora import methods
from fedlora.common.config import ClientConfig, ConfigError, ServerConfig, load_config, parse_override
from fedlora.common.data import BUILTIN_SETS, DIRICHLET, IID
from fedlora.common.storage import StorageError
from fedlora.common.tasks import get_task

# flag -> config field, for the server side (shared by `server` and `run`)
SERVER_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--host", "host", str, "address to bind"),
    ("--port", "port", int, "port to bind (0 = any free port)"),
    ("--metrics-port", "metrics_port", int, "serve Prometheus metrics at http://HOST:PORT/metrics "
     "(plain HTTP on --host; 0 = off, the default)"),
    ("--run-dir", "run_dir", str, "run folder for metrics, logs, summary and the adapter"),
    ("--strategy", "strategy", str, "federated method: " + ", ".join(methods.names())),
    ("--model", "model", str, "'default' (the task's built-in base), a local HF folder or (causal-lm) a .gguf file"),
    ("--rounds", "rounds", int, "number of rounds"),
    ("--min-clients", "min_clients", int, "fewest updates that make a round"),
    ("--fraction", "fraction", float, "fraction of clients sampled per round"),
    ("--deadline", "deadline_s", float, "seconds a round stays open"),
    ("--seed", "seed", int, "run seed (data split, sampling, initialisation)"),
    ("--token", "token", str, "shared client token (open test runs: any holder may join as any id)"),
    ("--open-run", "open_run", "flag", "serve without client credentials (tests; logged as a warning)"),
    ("--task", "task", str, "classification (default) or causal-lm"),
    ("--rank", "adapter.rank", int, "LoRA rank"),
    ("--lr", "training.learning_rate", float, "local learning rate"),
    ("--local-steps", "training.max_steps", int, "local steps per round (0 = full epochs)"),
    ("--batch-size", "training.batch_size", int, "local batch size"),
    ("--data", "data.dataset", str, "'trec' (built-in) or a data file: the test split, and the "
     "clients' shards where --partition federates it"),
    ("--partition", "data.partition", str, "dirichlet, iid, column (by --partition-column) or own "
     "(clients bring their files; the default for a file, except under 'fedlora run')"),
    ("--partition-column", "data.partition_column", str, "the column whose values make the clients"),
    ("--dirichlet-alpha", "data.dirichlet_alpha", float, "label skew of the dirichlet split"),
    ("--upload-codec", "codec.upload", lambda s: [x for x in s.split(",") if x], "e.g. zstd:3"),
    ("--download-codec", "codec.download", lambda s: [x for x in s.split(",") if x], "e.g. zstd:3"),
    ("--chunk-bytes", "chunk_bytes", int, "transfer chunk size"),
    ("--threads", "threads", int, "torch threads of the coordinator (0 = default)"),
    ("--dp-epsilon", "training.dp.target_epsilon", float, "DP-SGD on the clients with this target epsilon"),
    ("--dp-noise", "training.dp.noise_multiplier", float, "DP-SGD noise multiplier (0 = from --dp-epsilon)"),
    ("--dp-clip", "training.dp.clip_norm", float, "DP-SGD per-sample clipping norm"),
    ("--tls-cert", "tls.cert", str, "the coordinator's TLS certificate (PEM)"),
    ("--tls-key", "tls.key", str, "its private key (PEM)"),
    ("--client-ca", "tls.client_ca", str, "CA of client certificates: mutual TLS, CN = client id"),
    ("--insecure", "insecure", "flag", "serve plaintext instead of TLS (logged as a warning)"),
]

CLIENT_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--server", "server", str, "coordinator address host:port"),
    ("--id", "client_id", str, "this client's id"),
    ("--token", "token", str, "this client's token"),
    ("--model", "model", str, "local folder of the run's model ('' = as the run says)"),
    ("--data", "data", str, "this client's own CSV/JSON/JSONL/Parquet file or save_to_disk folder (default: its built-in shard)"),
    ("--state-dir", "state_dir", str, "folder for state kept across rounds"),
    ("--threads", "threads", int, "torch threads (0 = default)"),
    ("--device", "device", str, "auto, cpu, cuda, cuda:N"),
    ("--gradient-checkpointing", "gradient_checkpointing", str, "auto (on CUDA), on, off"),
    ("--ca-cert", "ca_cert", str, "CA that signed the coordinator's certificate (TLS)"),
    ("--cert", "cert", str, "this client's certificate (mutual TLS)"),
    ("--key", "key", str, "its private key"),
    ("--insecure", "insecure", "flag", "connect in plaintext (logged as a warning)"),
]


def _add_flags(p: argparse.ArgumentParser, flags, skip: set[str] = frozenset()) -> None:
    p.add_argument("--config", action="append", default=None,
                   help="YAML or JSON config file; again to add another (later keys win), e.g. "
                        "the clients file of `fedlora tokens`")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --set training.weight_decay=0.01")
    for flag, field, typ, help_ in flags:
        if flag in skip:
            continue
        if typ == "flag":
            p.add_argument(flag, dest=field.replace(".", "__"), action="store_const", const=True,
                           default=None, help=help_)
        else:
            p.add_argument(flag, dest=field.replace(".", "__"), type=typ, default=None, help=help_)


def _overrides(args: argparse.Namespace, flags) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _flag, field, _t, _h in flags:
        v = getattr(args, field.replace(".", "__"), None)
        if v is not None:
            out[field] = v
            if field.startswith("training.dp."):  # any DP flag turns DP on
                out["training.dp.enabled"] = True
    for item in args.set:
        k, v = parse_override(item)
        out[k] = v
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedlora", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("server", help="run the coordinator",
                       description="Run the coordinator: serve gRPC, schedule rounds, aggregate.")
    _add_flags(s, SERVER_FLAGS)
    s.add_argument("--clients", type=int, default=None, help="number of clients (ids client-0..N-1)")

    c = sub.add_parser("client", help="run one client",
                       description="Run one client: join the coordinator and train the rounds it plans.")
    _add_flags(c, CLIENT_FLAGS)

    r = sub.add_parser("run", help="run a local cluster (coordinator + N clients)",
                       description="Run a coordinator and N client processes on 127.0.0.1, "
                                   "with a live table; logs per process in the run folder.")
    _add_flags(r, SERVER_FLAGS)
    r.add_argument("--clients", type=int, default=None, help="number of client processes")
    r.add_argument("--client-threads", type=int, default=0,
                   help="torch threads per client (0 = cores / clients)")
    r.add_argument("--no-live", action="store_true", help="print lines instead of a live table")
    r.add_argument("--cluster", choices=["local", "netns"], default="local",
                   help="local: all on 127.0.0.1; netns: one network namespace per host with "
                        "shaped links (root; needs --spec)")
    r.add_argument("--spec", help="cluster spec for --cluster netns (see deploy/clusters/)")

    ce = sub.add_parser("certs", help="make a CA and TLS certificates for a cluster",
                        description="Make a CA, a coordinator certificate for the given host names/IPs "
                                    "and a client certificate per id (CN = id), as PEM files.")
    ce.add_argument("--out", required=True, help="folder for the PEM files")
    ce.add_argument("--hosts", default="localhost,127.0.0.1",
                    help="comma-separated names/IPs clients dial the coordinator by")
    ce.add_argument("--clients", default="client-0,client-1,client-2,client-3",
                    help="comma-separated client ids (or a number N for client-0..N-1)")
    ce.add_argument("--days", type=int, default=365, help="validity")

    tk = sub.add_parser("tokens", help="make a secret token per client id",
                        description="Write a `clients:` list of {id, token} (a config file the "
                                    "coordinator reads with --config, or merges into its own), "
                                    "readable by its owner only.")
    tk.add_argument("--out", required=True, help="YAML file to write (mode 0600)")
    tk.add_argument("--clients", default="4",
                    help="a number N for client-0..N-1, or comma-separated client ids")

    h = sub.add_parser("health", help="ask a coordinator's standard gRPC health service",
                       description="Exit 0 if the coordinator reports SERVING (for container health checks).")
    h.add_argument("--server", default="127.0.0.1:50051")
    h.add_argument("--ca-cert", default="", help="CA of the coordinator's certificate (TLS)")
    h.add_argument("--cert", default="", help="a client certificate (mutual TLS)")
    h.add_argument("--key", default="")
    h.add_argument("--insecure", action="store_true", help="plaintext")
    h.add_argument("--timeout", type=float, default=5.0)

    sh = sub.add_parser("shape", help="shape this host's interface with tc (root or NET_ADMIN)",
                        description="Upload rate with tbf on the interface, download rate with tbf on an "
                                    "ifb that its ingress is redirected to: what a client "
                                    "container's entrypoint runs.")
    sh.add_argument("--dev", default="eth0")
    sh.add_argument("--up-mbit", type=float, default=0.0)
    sh.add_argument("--down-mbit", type=float, default=0.0)

    rep = sub.add_parser("report", help="bytes per client and direction: tensor, payload, protobuf, wire; "
                                         "--plot: PNG charts",
                         description="Compare what crossed the wire with the payload, per client and "
                                     "direction; with --plot, draw the run instead: its test metric "
                                     "by round, by MB and by seconds, and bytes per client and round.")
    rep.add_argument("run_dir", help="a run folder (with metrics.jsonl)")
    rep.add_argument("--plot", action="store_true",
                     help="write PNG charts (into RUN_DIR/plots unless --out) and print their paths")
    rep.add_argument("--out", default=None, help="folder for the --plot charts")

    ex = sub.add_parser("export", help="a finished run's model as a merged Hugging Face folder (+ GGUF)",
                        description="Fold the run's final adapter into its base and write a plain "
                                    "Hugging Face folder (safetensors, tokenizer, generation config); "
                                    "for a Llama-family causal LM also an f16 GGUF. Both are read back "
                                    "and checked against base + adapter before the command succeeds.")
    ex.add_argument("run_dir", help="a finished run folder (with adapter/)")
    ex.add_argument("--merge", required=True, metavar="OUT", help="folder to write")
    ex.add_argument("--no-gguf", action="store_true", help="skip the GGUF file")
    ex.add_argument("--force", action="store_true", help="replace OUT if it exists")

    g = sub.add_parser("generate", help="greedy answers of a causal-LM run (or an exported model)",
                       description="Load a finished causal-LM run (base + adapter) or a folder/.gguf "
                                   "that `fedlora export` wrote, and print its greedy answer to each "
                                   "prompt, framed by the chat template training used.")
    g.add_argument("target", help="a run folder, a merged model folder, or a .gguf file")
    g.add_argument("--prompt", action="append", required=True, help="a user message (again for more)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    return p


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from fedlora.common.tls import channel_credentials

    if not args.insecure and not args.ca_cert:
        raise ConfigError("config error: --ca-cert: the coordinator is reached over TLS (or --insecure)")
    channel = (grpc.insecure_channel(args.server) if args.insecure else
               grpc.secure_channel(args.server, channel_credentials(args.ca_cert, args.cert, args.key)))
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="fedlora.v1.Coordinator"), timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"{args.server}: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{args.server}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


# Library warnings that tell a user of fedlora nothing they can act on (API deprecations inside
# transformers/peft, torch's note on the backward hooks opacus installs, peft's missing-config
# note for a GGUF base): kept out of the logs unless --verbose.
LIBRARY_NOISE: tuple[tuple[type[Warning], str, str], ...] = (
    (FutureWarning, "", r"(transformers|peft)(\.|$)"),
    (DeprecationWarning, "", r"(transformers|peft|torch)(\.|$)"),
    (UserWarning, r"Full backward hook is firing", ""),
    (UserWarning, r"Could not find a config file in", ""),
)


class _StderrNow(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record, not the one at setup:
    a client's progress bars (client/progress.py) take stderr over while they are drawn, and
    log lines then print above the bars instead of through them."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        handlers=[_StderrNow()])
    if not verbose:
        for category, message, module in LIBRARY_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.command == "server":
            ov = _overrides(args, SERVER_FLAGS)
            if args.clients is not None:
                ov["clients"] = args.clients
            cfg = load_config(ServerConfig, args.config, ov)
            from fedlora.server.app import serve

            return serve(cfg)
        if args.command == "certs":
            from pathlib import Path

            from fedlora.common.tls import make_certs

            from fedlora.deploy.tokens import client_ids

            ids = client_ids(args.clients)
            files = make_certs(Path(args.out), ids, [h for h in args.hosts.split(",") if h], args.days)
            for name, f in files.items():
                print(f"{name}: {f.cert} {f.key}")
            return 0
        if args.command == "tokens":
            from pathlib import Path

            from fedlora.deploy.tokens import client_ids, write_tokens

            entries = write_tokens(Path(args.out), client_ids(args.clients))
            print(f"{args.out}: tokens for {', '.join(e.id for e in entries)}")
            return 0
        if args.command == "shape":
            from fedlora.deploy.shaping import shape_interface

            print(f"{args.dev}: " + (", ".join(shape_interface(args.dev, args.up_mbit, args.down_mbit))
                                    or "unshaped"))
            return 0
        if args.command == "health":
            return _health(args)
        if args.command == "report":
            from pathlib import Path

            if args.plot:
                from fedlora.deploy.plots import plot

                for path in plot(Path(args.run_dir), Path(args.out) if args.out else None):
                    print(path)
                return 0
            if args.out is not None:
                raise ConfigError("config error: --out: only with --plot")
            from fedlora.deploy.report import report

            return report(Path(args.run_dir))
        if args.command == "export":
            from pathlib import Path

            from fedlora.deploy.export import ExportCheckFailed, export, print_report

            try:
                print_report(export(Path(args.run_dir), Path(args.merge), gguf=not args.no_gguf,
                                    force=args.force))
            except ExportCheckFailed as e:
                print(f"fedlora export: check failed: {e}", file=sys.stderr)
                return 1
            return 0
        if args.command == "generate":
            from pathlib import Path

            from fedlora.deploy.generate import generate_answers

            if args.max_new_tokens < 1:
                raise ConfigError("config error: --max-new-tokens: must be at least 1")
            for answer in generate_answers(Path(args.target), args.prompt, args.max_new_tokens, args.device):
                print(answer)
            return 0
        if args.command == "client":
            cfg = load_config(ClientConfig, args.config, _overrides(args, CLIENT_FLAGS))
            from fedlora.client.app import run_client

            return run_client(cfg)
        ov = _overrides(args, SERVER_FLAGS)
        if args.clients is not None:
            ov["clients"] = args.clients
        topology = None
        if args.cluster == "netns":
            from fedlora.deploy.netns import Netns, load_spec, require_root

            if not args.spec:
                raise ConfigError("config error: --spec: --cluster netns needs a cluster spec file")
            spec = load_spec(args.spec)
            require_root()
            ov["clients"] = [{"id": c.id, "token": ov.get("token", "")} for c in spec.clients]
            ov.pop("token", None)
            topology = Netns(spec)
        ov.setdefault("port", 0)
        if "run_dir" not in ov:
            import time

            ov["run_dir"] = f"runs/run-{time.strftime('%Y%m%d-%H%M%S')}"
        cfg = load_config(ServerConfig, args.config, ov)
        if cfg.data.partition is None and cfg.data.dataset not in BUILTIN_SETS:
            # local clients have no files of their own: the coordinator's file is federated
            scheme = DIRICHLET if get_task(cfg.task).has_classes else IID
            cfg = load_config(ServerConfig, args.config, {**ov, "data.partition": scheme})
        from fedlora.deploy.local import run_local

        return run_local(cfg, client_threads=args.client_threads, live=not args.no_live,
                         topology=topology)
    except (ConfigError, StorageError) as e:  # one line naming the field or the path
        print(f"fedlora {args.command}: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, ValueError, PermissionError) as e:
        print(f"fedlora {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
