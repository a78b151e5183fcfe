"""Serving a policy: calls/s and latency (p50/p95) of a VLA served by serve.py to 1, 4 and 8 concurrent clients
against calling it in-process, and mini-LIBERO evaluation throughput with eval_libero.py --workers 1 and 2.

    python bench/bench_serve.py --policy out/vla          # writes bench/results/serve.md (~2 min on 2 cores)

The server runs as its own process (`python serve.py --port 0`), the clients are threads of this one, each with
its own connection, sending one observation at a time and waiting for the answer (a robot, or one eval env).
Observations are random frames at the policy's input size with a mini-LIBERO instruction: the forward pass does
not depend on what the pixels show. The evaluation rows run eval_libero.py as a user would and read its
metrics.json; their wall time excludes loading the checkpoint and includes starting the worker processes.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import serve as S  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
       "TOKENIZERS_PARALLELISM": "false"}


def observations(n: int, size: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{S.IMAGE: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
             S.WRIST: rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
             S.STATE: rng.normal(size=8).astype(np.float32), S.PROMPT: "pick up the black bowl and place it on the plate"}
            for _ in range(n)]


def start_server(policy: str, max_batch: int):
    p = subprocess.Popen([sys.executable, "serve.py", "--policy", policy, "--host", "127.0.0.1", "--port", "0",
                          "--max-batch", str(max_batch), "--max-wait-ms", "2"], cwd=ROOT, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:                                # the banner names the port the OS chose
        m = re.search(r"on (ws://127\.0\.0\.1:\d+)", line)
        if m:
            return p, m.group(1)
    raise SystemExit(f"bench_serve.py: serve.py exited ({p.wait()}) before printing its banner")


def served(url: str, clients: int, calls: int, obs: list[dict]) -> dict:
    """`clients` threads, one connection each, `calls` sequential requests each after 2 warm-up ones."""
    lat, sizes, start = [], [], threading.Barrier(clients + 1)

    def client(i):
        with S.ws_connect(url, compression=None, max_size=None) as ws:
            ws.recv()                                    # the metadata
            mine = [S.pack(obs[(i + k) % len(obs)]) for k in range(calls + 2)]
            for m in mine[:2]:
                ws.send(m); ws.recv()
            start.wait()
            for m in mine[2:]:
                t = time.perf_counter()
                ws.send(m)
                reply = S.unpack(ws.recv())
                lat.append(time.perf_counter() - t)
                sizes.append(reply["server_timing"]["batch_size"])
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return dict(calls_s=clients * calls / wall, p50=1000 * np.percentile(lat, 50), p95=1000 * np.percentile(lat, 95),
                batch=float(np.mean(sizes)))


def in_process(policy, rows: int, calls: int, obs: list[dict]) -> dict:
    """One caller, `rows` observations per call (rows > 1: what perfect batching could reach)."""
    batch = obs[:rows]
    args = (np.stack([o[S.IMAGE] for o in batch]), np.stack([o[S.WRIST] for o in batch]),
            np.stack([o[S.STATE] for o in batch]), [o[S.PROMPT] for o in batch])
    policy(*args); policy(*args)                         # warm-up
    lat = []
    for _ in range(calls):
        t = time.perf_counter()
        policy(*args)
        lat.append(time.perf_counter() - t)
    return dict(calls_s=rows * calls / sum(lat), p50=1000 * np.percentile(lat, 50), p95=1000 * np.percentile(lat, 95),
                batch=float(rows))


def evaluate(policy: str, workers: int, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        subprocess.run([sys.executable, "eval_libero.py", "--policy", policy, "--workers", str(workers), "--out", out,
                        *argv], cwd=ROOT, env=ENV, check=True, capture_output=True)
        total = time.perf_counter() - t
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
    return dict(episodes=m["episodes_this_run"], steps=m["env_steps_this_run"], wall=m["wall_s"], total=total,
                success=m["average"])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", default="out/vla", help="VLA checkpoint dir (vla_train.py --out)")
    p.add_argument("--clients", default="1,4,8", help="concurrent clients to serve, comma-separated")
    p.add_argument("--calls", type=int, default=20, help="timed calls per client (in-process: per row count)")
    p.add_argument("--trials", type=int, default=3, help="eval rows: trials per task (spatial tasks 0-1)")
    p.add_argument("--max-steps", type=int, default=40, help="eval rows: policy steps per episode")
    p.add_argument("--out", default="bench/results/serve.md")
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    import torch
    policy = S.load_checkpoint(args.policy, "cpu")
    obs = observations(16, policy.image_size)
    md = S.describe_policy(policy)

    rows = []
    for c in clients:
        r = in_process(policy, c, args.calls, obs)
        rows.append(("in-process" if c == 1 else f"in-process, {c} rows per call", c, r))
        print(rows[-1], flush=True)
    server, url = start_server(args.policy, max(clients))
    try:
        for c in clients:
            rows.append(("served", c, served(url, c, args.calls, obs)))
            print(rows[-1], flush=True)
    finally:
        server.terminate(); server.wait()

    vla_argv = ["--suite", "spatial", "--tasks", "0,1", "--trials-per-task", str(args.trials), "--max-steps",
                str(args.max_steps), "--num-envs", str(args.trials)]
    expert_argv = ["--suite", "all", "--trials-per-task", "5", "--num-envs", "8"]
    evals = []
    for name, pol, argv in (("the VLA", args.policy, vla_argv), ("expert", "expert", expert_argv)):
        for w in (1, 2):
            evals.append((name, w, evaluate(pol, w, argv)))
            print(evals[-1], flush=True)

    n_eps = 2 * args.trials
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs: figures vary by ~20 %), "
             f"torch {torch.__version__}, {torch.get_num_threads()} thread(s). Policy: {args.policy} "
             f"({md['image_size']} px, {'+'.join(c.split('/')[-1] for c in md['cameras'])}, chunk {md['horizon']}, "
             f"DDIM {policy.vcfg['ddim_steps']} steps). Server: serve.py --max-batch {max(clients)} --max-wait-ms 2, "
             f"its own process; clients: threads of the bench, one connection each, one request at a time.", "",
             "| mode | clients (or rows per call) | calls/s | latency p50 | latency p95 | mean batch |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {c} | {r['calls_s']:.1f} | {r['p50']:.0f} ms | {r['p95']:.0f} ms | {r['batch']:.1f} |"
              for name, c, r in rows]
    lines += ["", f"mini-LIBERO, eval_libero.py --num-envs {args.trials}: the VLA on spatial tasks 0-1 x {args.trials} "
              f"trials ({n_eps} episodes, --max-steps {args.max_steps}; with --workers 2 it is served to both workers "
              f"from the evaluating process), the expert on all suites x 5 trials (200 episodes, --num-envs 8, nothing to serve: each worker runs its own).", "",
              "| policy | --workers | episodes | env steps | wall (eval) | episodes/s | env steps per wall s | command total |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {w} | {r['episodes']} | {r['steps']} | {r['wall']:.1f} s | {r['episodes'] / r['wall']:.2f} | "
              f"{r['steps'] / r['wall']:.0f} | {r['total']:.1f} s |" for name, w, r in evals]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
