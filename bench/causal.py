"""The causal-LM demo measured: federated against zero-shot and centralised, and FFA-LoRA against
FedAvg-LoRA under DP-SGD.

    .venv/bin/python bench/causal.py [--parts federated,centralised,dp] [--dp-rounds N]

Every run is deploy/demo-causal.yaml (SmolLM2-135M-Instruct, TREC as instructions, 4 clients on
a Dirichlet(0.5) split, LoRA r=8 on q_proj/v_proj, batch 8). The parts:

- ``federated``: the demo as a real local cluster (`fedlora run`): exact match, loss and
  perplexity on the coordinator's test examples per round, payload MB per round, wall time.
  Round 0 is the initial evaluation, i.e. the base model's zero-shot score on those examples.
- ``centralised``: LoRA trained in this process on the union of the clients' training rows
  (each client's shard less its local hold-out, as the clients split it), with the same batch
  size, learning rate and total number of optimizer steps as the federated run (rounds x
  clients x local steps), scored by the task's ``evaluate`` with the run's EvalOptions on the
  same test examples: one ``train_local`` call (one AdamW) scored at its end. With
  ``--segments``, it is trained in ``rounds`` segments of ``clients x local steps`` each (a
  fresh AdamW per segment, as a client has per round), scored at step 0 (the zero-shot score
  re-measured in-process: a check that both read the same examples the same way) and after
  each segment; an evaluation costs about as much as 6 training steps.
- ``dp``: FedAvg-LoRA and FFA-LoRA (A frozen at its seeded initialisation) with DP-SGD on the
  clients, target epsilon 3 over the run (delta 1e-5, clip 1.0), both at the demo's learning
  rate: FFA-LoRA's paper claims it is the better of the two under DP.

Each timing is printed with the load average seen before and after it (the machine may be
shared). Writes bench/causal-result.json (parts not re-run keep their previous results).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "demo-causal.yaml"
RESULT = ROOT / "bench" / "causal-result.json"
PARTS = ("federated", "centralised", "dp")
SAMPLE_ANSWERS = 6  # greedy answers shown before and after centralised training
DP_EPSILON = 3.0
DP_RUNS = {"fedavg-lora eps=3": ["--strategy", "fedavg-lora"],
           "ffa-lora eps=3": ["--strategy", "ffa-lora"]}


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def federated(name: str, flags: list[str], out: Path) -> dict:
    """One real local cluster run of the demo config changed by ``flags``."""
    run_dir = out / "".join(c if c.isalnum() or c in "-." else "_" for c in name)
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    cmd = [sys.executable, "-m", "fedlora.deploy.cli", "run", "--config", str(CONFIG),
           "--run-dir", str(run_dir), "--no-live", *flags]
    load_before, t0 = loadavg(), time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if p.returncode != 0:
        raise SystemExit(f"{name} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rounds = [{"round": r["round"], "exact_match": r.get("test_accuracy"), "loss": r.get("test_loss"),
               "perplexity": r.get("test_perplexity"), "mb_up": r.get("up_mb") or 0.0,
               "mb_down": r.get("down_mb") or 0.0, "seconds": r.get("seconds") or 0.0}
              for r in recs if r["type"] == "round"]
    eps = [r["metrics"]["dp_epsilon"] for r in recs
           if r["type"] == "client" and r.get("metrics") and "dp_epsilon" in r["metrics"]]
    return {"config": name, "flags": flags, "rounds": rounds,
            "wall_seconds_command": round(wall, 1), "wall_seconds_run": summary["elapsed_seconds"],
            "mb_up": summary["mb_up"], "mb_down": summary["mb_down"],
            "max_epsilon": max(eps) if eps else None,
            "loadavg_before": load_before, "loadavg_after": loadavg()}


def centralised(segments: bool) -> dict:
    """LoRA on the union of the clients' training rows, the federated run's steps in total."""
    import torch

    from fedlora.client.trainer import train_local
    from fedlora.common.config import ClientConfig, ServerConfig, load_config
    from fedlora.common.data import split_local
    from fedlora.common.model import AdaptedModel, adapter_spec_from_config
    from fedlora.common.tasks import get_task
    from fedlora.common.tasks.causal_lm import Conversations, generate
    from fedlora.proto.v1 import fedlora_pb2 as pb

    torch.set_num_threads(os.cpu_count() or 1)
    cfg = load_config(ServerConfig, CONFIG, {})
    task = get_task(cfg.task)
    n_clients = len(cfg.client_entries())
    split = task.federated_split(cfg.data.dataset, cfg.data.split_plan(n_clients, cfg.seed), cfg.data)
    hold_out = ClientConfig.model_fields["local_eval_fraction"].default
    parts = []
    for k in range(n_clients):  # what each client trains on: its shard less its hold-out
        shard = split.shard(k)
        train_idx, _ = split_local(len(shard), hold_out, cfg.seed)
        parts.append(shard.subset(train_idx))
    union = Conversations([p for c in parts for p in c.prompts], [r for c in parts for r in c.responses],
                          [y for c in parts for y in c.labels])
    test, opts = split.test(), cfg.eval_options()
    tokenizer = task.load_tokenizer(cfg.model)
    am = AdaptedModel(task.load_base(cfg.model, 0, cfg.seed), adapter_spec_from_config(cfg.adapter, cfg.seed),
                      task.peft_task_type)
    t = cfg.training
    total = cfg.rounds * n_clients * t.max_steps  # the federated run's optimizer steps, all clients
    segment = n_clients * t.max_steps if segments else total
    plan = pb.LocalTraining(epochs=t.epochs, max_steps=segment, batch_size=t.batch_size,
                            learning_rate=t.learning_rate, weight_decay=t.weight_decay,
                            optimizer=t.optimizer, max_grad_norm=t.max_grad_norm)
    device = torch.device("cpu")
    load_before, t0 = loadavg(), time.time()
    points, train_s, eval_s = [], 0.0, 0.0

    def score(steps: int, train_loss: float | None) -> None:
        nonlocal eval_s
        e0 = time.time()
        s = task.evaluate(am.model, tokenizer, test, opts, device)
        eval_s += time.time() - e0
        points.append({"steps": steps, "exact_match": s.accuracy, "loss": s.loss,
                       "perplexity": s.extra.get("perplexity"), "train_loss": train_loss})
        print(f"centralised: {steps} steps, exact match {s.accuracy:.4f}, loss {s.loss:.4f}", flush=True)

    def answers() -> list[dict]:  # what the model says to the first few test questions
        said = generate(am.model, tokenizer, test.prompts[:SAMPLE_ANSWERS], opts.max_new_tokens, device)
        return [{"question": p[-1]["content"].rsplit("Question: ", 1)[-1], "expected": r, "answer": a}
                for p, r, a in zip(test.prompts, test.responses, said)]

    base_answers = answers()
    if segments:
        score(0, None)
    for r in range(1, total // segment + 1):
        m = train_local(am, union, tokenizer, plan, cfg.data.max_length, cfg.seed * 1000 + r, device,
                        task=task)
        train_s += m["train_seconds"]
        score(r * segment, m["train_loss"])
    tuned_answers = answers()
    return {"config": "centralised", "train_rows": len(union), "base_answers": base_answers,
            "tuned_answers": tuned_answers, "steps": total, "segment_steps": segment,
            "batch_size": t.batch_size, "learning_rate": t.learning_rate, "points": points,
            "train_seconds": round(train_s, 1), "seconds_per_step": round(train_s / total, 2),
            "eval_seconds": round(eval_s, 1), "wall_seconds": round(time.time() - t0, 1),
            "threads": torch.get_num_threads(), "loadavg_before": load_before, "loadavg_after": loadavg()}


def f4(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def field(d: dict, key: str, spec: str = "") -> str:
    """A recorded figure, or '-' where that run's record lacks it (an interrupted or partial run)."""
    v = d.get(key)
    return "-" if v is None else format(v, spec)


def report(res: dict) -> None:
    fed, cen = res.get("federated"), res.get("centralised")
    if fed:
        print(f"\nfederated ({fed['config']}): wall {field(fed, 'wall_seconds_command', '.0f')} s for the "
              f"command, {field(fed, 'wall_seconds_run', '.0f')} s in the coordinator; load "
              f"{field(fed, 'loadavg_before')} -> {field(fed, 'loadavg_after')}")
        print("| round | exact match | loss | perplexity | MB up | MB down | seconds |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for r in fed["rounds"]:
            print(f"| {r['round']} | {f4(r['exact_match'])} | {f4(r['loss'])} | {r['perplexity'] or 0:.2f} | "
                  f"{r['mb_up']:.3f} | {r['mb_down']:.3f} | {r['seconds']:.1f} |")
    if cen:
        print(f"\ncentralised: {cen['train_rows']} rows, {cen['steps']} steps of batch {cen['batch_size']}, "
              f"{field(cen, 'seconds_per_step')} s/step ({field(cen, 'threads')} threads), wall "
              f"{field(cen, 'wall_seconds', '.0f')} s; load {field(cen, 'loadavg_before')} -> "
              f"{field(cen, 'loadavg_after')}")
        print("| steps | exact match | loss | perplexity | train loss |")
        print("|---:|---:|---:|---:|---:|")
        for p in cen["points"]:
            print(f"| {p['steps']} | {f4(p['exact_match'])} | {f4(p['loss'])} | {p['perplexity']:.2f} | "
                  f"{f4(p['train_loss'])} |")
    if cen and cen.get("base_answers"):
        print("\n| question | expected | base model says | centralised LoRA says |")
        print("|---|---|---|---|")
        for b, t in zip(cen["base_answers"], cen["tuned_answers"]):
            print(f"| {b['question']} | {b['expected']} | {b['answer']!r} | {t['answer']!r} |")
    if fed and cen:
        zero, last, c = fed["rounds"][0], fed["rounds"][-1], cen["points"][-1]
        print("\n| model | exact match | loss | vs zero-shot (exact match) |")
        print("|---|---:|---:|---:|")
        print(f"| zero-shot (round 0) | {f4(zero['exact_match'])} | {f4(zero['loss'])} | 1.00x |")
        for label, s in ((f"federated, round {last['round']}", last), (f"centralised, {c['steps']} steps", c)):
            ratio = s["exact_match"] / zero["exact_match"] if zero["exact_match"] else float("inf")
            print(f"| {label} | {f4(s['exact_match'])} | {f4(s['loss'])} | {ratio:.2f}x |")
        gap = c["exact_match"] - zero["exact_match"]
        if gap:
            print(f"federated gain / centralised gain (exact match over zero-shot): "
                  f"{(last['exact_match'] - zero['exact_match']) / gap:.2f}")
    dp = res.get("dp")
    if dp:
        print(f"\nDP-SGD, target epsilon {DP_EPSILON:g} (delta 1e-5, clip 1.0):")
        print("| config | exact match by round | final loss | max epsilon | MB up | MB down | seconds | load before -> after |")
        print("|---|---|---:|---:|---:|---:|---:|---|")
        for r in dp:
            em = " / ".join(f4(x["exact_match"]) for x in r["rounds"])
            print(f"| {r['config']} | {em} | {f4(r['rounds'][-1]['loss'])} | {f4(r['max_epsilon'])} | "
                  f"{r['mb_up']:.3f} | {r['mb_down']:.3f} | {r['wall_seconds_command']:.0f} | "
                  f"{r['loadavg_before']} -> {r['loadavg_after']} |")


def save(part: str, value, out: Path) -> None:
    """Writes ``part`` into the result file (re-read first: parts may run as separate
    commands at once) and alone into ``out/<part>.json``."""
    (out / f"{part}.json").write_text(json.dumps(value, indent=1))
    res = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    res[part] = value
    RESULT.write_text(json.dumps(res, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    ap.add_argument("--dp-rounds", type=int, default=0, help="rounds of the DP runs (0 = the demo's)")
    ap.add_argument("--dp-only", help="comma-separated DP runs: " + ", ".join(DP_RUNS))
    ap.add_argument("--segments", action="store_true",
                    help="centralised: score after each round's worth of steps (and at step 0)")
    ap.add_argument("--out", default="runs/bench-causal")
    ap.add_argument("--report", action="store_true", help="print the saved result only")
    args = ap.parse_args()
    res = json.loads(RESULT.read_text()) if RESULT.is_file() else {}
    if not args.report:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        parts = [p for p in args.parts.split(",") if p]
        for p in parts:
            if p not in PARTS:
                raise SystemExit(f"--parts: unknown part {p!r} (known: {', '.join(PARTS)})")
        if "federated" in parts:
            save("federated", federated("fedavg-lora (demo)", [], out), out)
        if "centralised" in parts:
            save("centralised", centralised(args.segments), out)
        if "dp" in parts:
            rounds = ["--rounds", str(args.dp_rounds)] if args.dp_rounds else []
            for name in args.dp_only.split(",") if args.dp_only else DP_RUNS:
                run = federated(name, [*DP_RUNS[name], *rounds, "--dp-epsilon", str(DP_EPSILON)], out)
                print(f"done {name}", flush=True)
                done = json.loads(RESULT.read_text()).get("dp", []) if RESULT.is_file() else []
                save("dp", sorted([r for r in done if r["config"] != name] + [run],
                                  key=lambda r: list(DP_RUNS).index(r["config"])), out)
        res = json.loads(RESULT.read_text())
    report(res)


if __name__ == "__main__":
    main()
