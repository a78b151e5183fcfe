"""
eval_workers.py -- `eval_libero.py --workers N`: the episodes of one evaluation spread over N simulator processes.

Real LIBERO steps at 2-7 env steps/s per process, so an evaluation scales with cores only if several simulators
run at once. The policy stays in one place: a VLA checkpoint (or a policy object handed to run_eval) is served
from the evaluating process by serve.py, which answers every worker's lockstep envs with batched forward passes;
`--policy ws://HOST:PORT` points them all at a server elsewhere (a GPU box). expert and random need the env, so
each worker builds its own. Results, episodes.jsonl, --resume and --video behave as with --workers 1.

    python eval_libero.py --policy expert --suite all --trials-per-task 10 --workers 2
    python eval_libero.py --policy out/vla --suite all --workers 4 --num-envs 4
    MUJOCO_GL=egl python eval_libero.py --env libero --policy ws://gpu-box:8000 --workers 16 --num-envs 1

How. The pending episodes are cut into units (`plan_units`: one task's consecutive trials, so a worker keeps its
envs for a unit) and handed out one at a time to whichever worker is free. A worker (`eval_worker`) runs a unit
with eval_libero.run_eval into OUT/workers/uNNNNaK/; the parent copies each finished episode from there into
OUT/episodes.jsonl within a fraction of a second, so an interrupted run resumes like any other. A worker that
dies is replaced and the unfinished episodes of its unit run once more; if they kill a worker again each is
logged as an error record (success false, the reason in `error`): no episode is lost or logged twice. Each
worker's output (its tables, tracebacks) is in OUT/workers/wK.log.
"""
import json
import multiprocessing as mp
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import wait

from tqdm import tqdm

from config import write_json
from eval_libero import (DEFAULT_LAYOUT, Config, check_layout, ep_key, fail, load_policy, make_backend,
                         open_log, plan_episodes, print_table, run_eval, summarize, trained_layout)


def plan_units(pending: list[dict], workers: int) -> list[list[dict]]:
    """The pending episodes cut into units of work: consecutive episodes of one (suite, task), at most
    ceil(len / workers) each, so every worker gets a share and keeps its envs for a whole unit (real LIBERO
    needs ~8 s per env build)."""
    size, units = max(1, -(-len(pending) // workers)), []
    for e in pending:
        last = units[-1][-1] if units else None
        if last and len(units[-1]) < size and (last["suite"], last["task"]) == (e["suite"], e["task"]):
            units[-1].append(e)
        else:
            units.append([e])
    return units


def eval_worker(k: int, cfg: dict, url: str, conn, log_path: str) -> None:
    """One --workers process: says "ready" once its backend and policy are built, then runs each unit it is sent
    with run_eval into the unit's own dir and answers with the unit's id. The policy is the one served at `url`,
    or its own (expert/random read the env)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1); os.dup2(fd, 2)              # its tables and progress bars go to OUT/workers/wK.log
    cfg = Config(**{**cfg, "workers": 1, "resume": False})
    backend = make_backend(cfg.env, cfg.layout)             # the parent resolved the layout
    policy = load_policy(Config(**{**vars(cfg), "policy": url}) if url else cfg)
    conn.send("ready")
    while (unit := conn.recv()) is not None:
        uid, episodes, out = unit
        run_eval(Config(**{**vars(cfg), "out": out}), policy=policy, backend=backend, episodes=episodes)
        conn.send(uid)


@dataclass
class Worker:                                   # the parent's view of one worker process
    proc: object
    conn: object
    ready: bool = False
    unit: tuple = None                          # (uid, episodes, attempt, dir) while it runs one


class Pool:
    """The worker processes of one evaluation, seen from the parent: hands out units, copies finished episodes
    into the log (`record`), replaces dead workers and runs their unfinished episodes once more."""

    def __init__(self, cfg: Config, backend, done: dict, log, url: str, entry, wdir: str, total: int):
        self.cfg, self.backend, self.done, self.log, self.url, self.entry, self.wdir = cfg, backend, done, log, url, entry, wdir
        self.ctx = mp.get_context("spawn")      # not fork: this process may hold a server thread and torch
        self.workers, self.offsets, self.idle_deaths = {}, {}, 0   # offsets: unit dir -> bytes of its log copied
        self.n_new = self.n_ok = self.env_steps = 0
        self.stepping_s, self.render_size = 0.0, None
        self.bar = tqdm(total=total, unit="ep", dynamic_ncols=True)

    def run(self, units: deque) -> None:
        self.workers = {k: self.spawn(k) for k in range(min(self.cfg.workers, len(units)))}
        while units or any(w.unit for w in self.workers.values()):
            for w in self.workers.values():     # 1. ready, idle workers get the next unit
                if w.ready and w.unit is None and units:
                    uid, eps, attempt = units.popleft()
                    w.unit = (uid, eps, attempt, os.path.join(self.wdir, f"u{uid:04d}a{attempt}"))
                    try:
                        w.conn.send((uid, eps, w.unit[3]))
                    except OSError:
                        pass                    # it just died: handled as a death with this unit
            ws = self.workers.values()
            wait([w.conn for w in ws] + [w.proc.sentinel for w in ws], timeout=0.2)
            for k, w in list(self.workers.items()):   # 2. finished episodes, finished units, dead workers
                if w.unit:
                    self.collect(w.unit[3])
                try:
                    while w.conn.poll():
                        msg = w.conn.recv()
                        if msg == "ready":
                            w.ready = True
                        elif w.unit and msg == w.unit[0]:
                            self.unit_done(k, w)
                except (EOFError, OSError):
                    pass                        # it died: below
                if not w.proc.is_alive():
                    self.died(k, w, units)
        for w in self.workers.values():
            try:
                w.conn.send(None)
            except OSError:
                pass
        for w in self.workers.values():
            w.proc.join(timeout=30)

    def spawn(self, k: int) -> Worker:
        mine, theirs = self.ctx.Pipe()
        p = self.ctx.Process(target=self.entry, args=(k, vars(self.cfg), self.url, theirs, self.log_path(k)), daemon=True)
        p.start()
        theirs.close()
        return Worker(p, mine)

    def log_path(self, k: int) -> str:
        return os.path.join(self.wdir, f"w{k}.log")

    def unit_done(self, k: int, w: Worker) -> None:
        _, eps, _, udir = w.unit
        self.collect(udir)
        for e in eps:                           # run_eval logs every episode, errors included: only a guard
            if ep_key(e) not in self.done:
                self.record(self.error_record(e, f"worker {k} finished its unit without logging this episode"))
        self.close_unit(udir)
        w.unit = None

    def died(self, k: int, w: Worker, units: deque) -> None:
        w.proc.join()
        del self.workers[k]
        code = w.proc.exitcode
        if w.unit is None:                      # while starting or between units: no episode of ours was running
            self.idle_deaths += 1
            if self.idle_deaths > self.cfg.workers:
                fail(f"worker processes keep exiting before they finish a unit (worker {k}: exit code {code}, last "
                     f"line of {self.log_path(k)}: {last_line(self.log_path(k))})")
        else:
            uid, eps, attempt, udir = w.unit
            self.collect(udir)
            self.close_unit(udir)
            left = [e for e in eps if ep_key(e) not in self.done]
            tqdm.write(f"worker {k} died (exit code {code}) with {len(left)} episode(s) of its unit unfinished: "
                       f"{'running them once more' if attempt == 1 else 'logging them as errors'}")
            if attempt == 1 and left:
                units.appendleft((uid, left, 2))
            for e in left if attempt > 1 else []:
                self.record(self.error_record(e, f"the worker process running this episode died twice (exit code "
                                                 f"{code}); see {self.log_path(k)}"))
        if units:
            self.workers[k] = self.spawn(k)

    def record(self, rec: dict) -> None:        # one finished episode into OUT/episodes.jsonl
        self.log.write(json.dumps(rec) + "\n"); self.log.flush()
        self.done[ep_key(rec)] = rec
        self.n_new, self.n_ok = self.n_new + 1, self.n_ok + bool(rec["success"])
        self.bar.update(1)
        self.bar.set_postfix(success=f"{self.n_ok / self.n_new:.1%}", refresh=False)

    def collect(self, udir: str) -> None:       # the unit's newly finished episodes: complete lines only
        try:
            with open(os.path.join(udir, "episodes.jsonl"), "rb") as f:
                f.seek(self.offsets.get(udir, 0))
                data = f.read()
        except FileNotFoundError:
            return
        data = data[: data.rfind(b"\n") + 1]
        self.offsets[udir] = self.offsets.get(udir, 0) + len(data)
        for line in data.decode().splitlines():
            rec = json.loads(line)
            if ep_key(rec) not in self.done:
                self.record(rec)

    def close_unit(self, udir: str) -> None:    # its videos join OUT/videos, its step counts the metrics
        if self.cfg.video and os.path.isdir(os.path.join(udir, "videos")):
            for name in os.listdir(os.path.join(udir, "videos")):
                os.replace(os.path.join(udir, "videos", name), os.path.join(self.cfg.out, "videos", name))
        try:
            with open(os.path.join(udir, "metrics.json")) as f:
                m = json.load(f)
            with open(os.path.join(udir, "results.json")) as f:
                self.render_size = json.load(f)["render_size"]
            self.env_steps += m["env_steps_this_run"]
            self.stepping_s += m["stepping_s"]
        except FileNotFoundError:
            pass                                # a unit whose worker died wrote none
        shutil.rmtree(udir, ignore_errors=True)

    def error_record(self, e: dict, msg: str) -> dict:   # the fields run_eval's records have
        return dict(e, env=self.cfg.env, policy=self.cfg.policy, success=False, steps=0, wall_s=0.0, error=msg,
                    instruction=self.backend.instruction(e["suite"], e["task"]))

    def close(self) -> None:
        for w in self.workers.values():
            if w.proc.is_alive():
                w.proc.terminate()
        self.bar.close()


def last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read().replace("\r", "\n").splitlines() if line.strip()]
    except FileNotFoundError:
        lines = []
    return lines[-1] if lines else "(no output)"


def run_workers(cfg: Config, policy=None, backend=None, worker=eval_worker) -> dict:
    """Evaluate cfg's episodes in cfg.workers processes (the module's docstring says how); returns the results
    dict, as run_eval. `worker` is the processes' entry point: tests inject one that crashes."""
    if cfg.workers < 1:
        fail("--workers must be >= 1")
    if backend is not None:
        fail("--workers > 1 builds a backend from --env in each process: an injected backend needs --workers 1")
    trained = getattr(policy, "layout", None) or trained_layout(cfg)
    cfg = Config(**{**vars(cfg), "layout": check_layout(cfg.layout or trained or DEFAULT_LAYOUT)})
    backend = make_backend(cfg.env, cfg.layout)
    episodes = plan_episodes(cfg, backend)
    wdir = os.path.join(cfg.out, "workers")
    shutil.rmtree(wdir, ignore_errors=True)     # an earlier run's units: OUT/episodes.jsonl is what counts
    os.makedirs(wdir)
    if cfg.video:
        os.makedirs(os.path.join(cfg.out, "videos"), exist_ok=True)
    done, log = open_log(os.path.join(cfg.out, "episodes.jsonl"), cfg)
    pending = [e for e in episodes if ep_key(e) not in done]
    server, pool, url = None, None, ""
    try:                                        # whatever happens: no worker left running, the server stopped
        if policy is None and cfg.policy.startswith("ws://"):
            url = cfg.policy
        elif policy is not None or os.path.isdir(cfg.policy):
            policy = policy if policy is not None else load_policy(cfg)
            if not getattr(policy, "episodic", False):
                from serve import PolicyServer  # every lockstep env of every worker can join one forward pass
                server = PolicyServer(policy, max_batch=cfg.workers * cfg.num_envs, max_wait_ms=2.0)
                url = f"ws://127.0.0.1:{server.start()}"
        units = deque((uid, u, 1) for uid, u in enumerate(plan_units(pending, cfg.workers)))
        print(f"{cfg.env} backend, policy {cfg.policy}: {len(episodes)} episodes, {len(episodes) - len(pending)} "
              f"already done; {len(units)} units over {cfg.workers} worker processes with {cfg.num_envs} envs each"
              f"{f', served from {url}' if server else ''}; their output: {wdir}/w*.log")
        t_start = time.perf_counter()
        pool = Pool(cfg, backend, done, log, url, worker, wdir, len(pending))
        pool.run(units)
        wall = time.perf_counter() - t_start
    finally:
        if pool is not None:
            pool.close()
        if server is not None:
            server.stop()
        log.close()

    records = [done[ep_key(e)] for e in episodes]
    res = summarize(records, backend)
    res.update(config=vars(cfg), backend=dict(name=backend.name, **backend.versions()), render_size=pool.render_size)
    steps, stepping = pool.env_steps, pool.stepping_s
    metrics = dict(success={s: v["success"] for s, v in res["suites"].items()}, average=res["average"],
                   episodes=len(records), episodes_this_run=pool.n_new, env_steps_this_run=steps, wall_s=round(wall, 2),
                   stepping_s=round(stepping, 2), env_steps_per_s=round(steps / max(stepping, 1e-9), 1),
                   env_steps_per_wall_s=round(steps / max(wall, 1e-9), 1), num_envs=cfg.num_envs, workers=cfg.workers,
                   backend=backend.name, layout=getattr(backend, "layout", None), trained_layout=trained,
                   layout_mismatch=bool(trained and getattr(backend, "layout", None) not in (None, trained)),
                   **backend.versions())
    write_json(os.path.join(cfg.out, "results.json"), res, indent=2)
    write_json(os.path.join(cfg.out, "metrics.json"), metrics, indent=2)
    print_table(res)
    print(f"{pool.n_new} episodes in {wall:.1f}s with {cfg.workers} worker processes: {metrics['env_steps_per_wall_s']} "
          f"env steps per wall second all together, {metrics['env_steps_per_s']} per second of stepping in each; "
          f"wrote {cfg.out}")
    return res
