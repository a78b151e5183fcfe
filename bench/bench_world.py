"""Benchmark mini-LIBERO: env steps/s with both cameras rendered (one process), expert success per suite on
all 50 init states of all 40 tasks, and the default demo set's generation time and size.

    python bench/bench_world.py            # writes bench/results/world.md
Goal: ≥ 700 steps/s with both cameras at the default 128 px, i.e. ≥ 100× real LIBERO's ~7/s here.
"""
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from data.mini_libero import OffScreenRenderEnv, expert_success, get_benchmark, write_demos  # noqa: E402
from data.scenes import N_INIT_STATES, SUITES  # noqa: E402


def steps_per_second(suite: str, size: int = 128, n: int = 1000) -> float:
    b = get_benchmark(suite)
    rates = []
    for task_id in range(b.n_tasks):
        env = OffScreenRenderEnv(b.get_task(task_id), size, size)
        env.set_init_state(b.get_task_init_states(task_id)[0])
        actions = np.random.default_rng(task_id).uniform(-1, 1, (n // b.n_tasks, 7))
        t0 = time.perf_counter()
        for a in actions:
            env.step(a)
        rates.append(len(actions) / (time.perf_counter() - t0))
    return float(np.mean(rates))


def main():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = ["| suite | steps/s (2 cameras, 128 px) | expert success (50 init × 10 tasks) | worst task |", "|---|---|---|---|"]
    t0 = time.time()
    succ = expert_success(SUITES, N_INIT_STATES)
    t_expert = time.time() - t0
    for s in SUITES:
        sps = steps_per_second(s)
        rates = succ[s]
        rows.append(f"| {s} | {sps:,.0f} | {np.mean(rates):.1%} | {min(rates):.0%} (task {int(np.argmin(rates))}) |")
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as d:
        g = write_demos(os.path.join(d, "demos"), list(SUITES), per_task=10, workers=2)
    text = "\n".join([
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"one process for steps/s.", "", *rows, "",
        f"Expert success over 2,000 episodes took {t_expert:.1f} s (physics only).",
        f"Default demo set (10 per task, 40 tasks, 128 px, 2 workers): {g['episodes']} episodes, {g['steps']:,} steps, "
        f"{g['seconds']:.1f} s, {g['mb']:.1f} MB.", ""])
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/world.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
