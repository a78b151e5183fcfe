"""
bench/bench_grpo.py -- grpo.py against TRL's GRPOTrainer, and the acceptance runs of grpo.py.

`speed` (default): the same tiny model (an sft.py checkpoint), the same Stage-2 prompts with their images, G = 8,
8 prompts per optimizer step (64 completions), the same completion limit, sampling (temperature 1, top-p 1,
top-k off), one update per generation (μ 1, so neither recomputes old log-probs), β 0 (no reference model),
token-level loss (TRL's "dapo"), group std scaling, lr 3e-5, fp32 on CPU, and the same reward function
(grpo.reward). Each side runs `--steps` optimizer steps, `--repeats` times, alternating (so background load hits
both alike), every block in a fresh process; the first step of each block is dropped as warm-up. Reported: median
wall and CPU seconds per optimizer step, mean completion length, and the ratios. TRL is installed only for this
(requirements-bench.txt); grpo.py never imports it.

`accept`: the acceptance runs -- `python grpo.py --seed s --out OUT/seed{s}` for each seed (subprocess, one at a
time), then one markdown table (held-out figures before/after, the paired change with its 95 % interval, the
image-shuffle control after GRPO, wall time) and the reward curve of every seed as a PNG (drawn with pillow).

    pip install -r requirements-bench.txt
    python bench/bench_grpo.py speed --init out/sft                          # ~3 min on 2 CPUs
    OMP_NUM_THREADS=1 python bench/bench_grpo.py speed ...    # when another job shares the 2 cores: two torch
                                                              # threads against a busy core thrash (16x slower here)
    python bench/bench_grpo.py accept --init out/sft --seeds 0,1 --png assets/grpo_reward.png   # ~8 min
"""
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from config import arg, make_parser, write_text  # noqa: E402


@dataclass
class Config:
    mode: str = arg("speed", "speed (grpo.py vs TRL) | accept (seeded grpo.py runs, table + reward-curve PNG)")
    side: str = arg("", "internal: run one timing block of 'grpo' or 'trl' and print its timings as JSON")
    init: str = arg("out/sft", "the sft.py checkpoint both start from")
    out: str = arg("", "markdown file for the results ('': bench/results/grpo.md, or grpo_accept.md for accept)")
    steps: int = arg(6, "speed: optimizer steps per block (the first is warm-up)")
    repeats: int = arg(3, "speed: blocks per side, alternating")
    max_new_tokens: int = arg(64, "speed: completion limit of both")
    seeds: str = arg("0,1", "accept: training seeds")
    runs: str = arg("out/grpo-accept", "accept: directory for the per-seed runs")
    grpo_args: str = arg("", "accept: extra grpo.py flags, e.g. '--lr 1e-5 --steps 60'")
    png: str = arg("assets/grpo_reward.png", "accept: reward-curve image")


def parse_config(argv=None) -> Config:
    p = make_parser(Config, __doc__, skip=("mode",))           # the mode is a positional argument, not a flag
    p.add_argument("mode", nargs="?", default="speed", choices=["speed", "accept", "block"])
    return Config(**vars(p.parse_args(argv)))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}, Python {platform.python_version()}"


# ----------------------------------------------------------------------------- speed
def ours(cfg: Config, out: str, seed: int) -> tuple[list, list, list]:
    import grpo
    grpo.main(grpo.parse_config(["--init", cfg.init, "--out", out, "--steps", str(cfg.steps), "--no-eval",
                                 "--rollout-batch", "8", "--update-batch", "8", "--group", "8", "--sample-every", "0",
                                 "--max-new-tokens", str(cfg.max_new_tokens), "--lr", "3e-5", "--seed", str(seed)]))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    return [x["s_round"] for x in lines[1:]], [x["cpu_s_round"] for x in lines[1:]], [x["length"] for x in lines]


def trl_run(cfg: Config, out: str, seed: int) -> tuple[list, list, list]:
    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    import grpo
    import samples as sm
    import sft
    from data.demos import open_dataset
    from model import load_backbone
    model, proc, fast, vocab = load_backbone(cfg.init)
    tok = proc.tokenizer
    tok.padding_side = "left"           # as grpo.py: the checkpoint's tokenizer pads on the right, and TRL (1.16)
    # left-pads prompt_ids itself but takes mm_token_type_ids from processor(..., padding=True): right-padded, the
    # image span no longer lines up with the attention mask and Qwen2.5-VL's get_rope_index fails (shape mismatch)
    with open(os.path.join(cfg.init, "stage2.json")) as f:
        stage2 = json.load(f)
    ds = open_dataset(stage2.get("data") or stage2["demos"], stage2.get("data_format", "auto"),
                      stage2.get("drop_noops", False))
    prompts = sm.build_samples(ds, stage2["episodes"], fast, {"reason": 1.0}, 0)
    order = np.random.default_rng(seed).permutation(len(prompts))[: 8 * cfg.steps]
    frames = sm.Frames(ds, sorted({prompts[i].episode for i in order}))
    rows = [{"prompt": [{"role": "user", "content": prompts[i].prompt}], "image": Image.fromarray(frames(prompts[i])),
             "target": prompts[i].actions} for i in order]          # TRL puts the image before the text, as sm.collate

    def reward_fn(completion_ids, target, **kw):                 # grpo.reward on TRL's completions
        out = []
        for ids, t in zip(completion_ids, target):
            finished = bool(ids) and ids[-1] == tok.eos_token_id
            ids = ids[:-1] if finished else ids
            out.append(grpo.reward(ids, tok.decode(ids, skip_special_tokens=False), finished, t, vocab, fast)[0])
        return out

    class Clock(TrainerCallback):
        def __init__(self):
            self.t, self.cpu, self.dt, self.dcpu, self.len = time.time(), time.process_time(), [], [], []

        def on_step_end(self, args, state, control, **kw):
            self.dt.append(time.time() - self.t)
            self.dcpu.append(time.process_time() - self.cpu)
            self.t, self.cpu = time.time(), time.process_time()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.len.append(logs["completions/mean_length"])

    args = GRPOConfig(output_dir=out, use_cpu=True, bf16=False, learning_rate=3e-5, lr_scheduler_type="constant",
                      warmup_steps=0, weight_decay=0.01, max_grad_norm=1.0, adam_beta2=0.999, num_generations=8,
                      per_device_train_batch_size=64, gradient_accumulation_steps=1, max_completion_length=cfg.max_new_tokens,
                      temperature=1.0, top_p=1.0, top_k=0, beta=0.0, num_iterations=1, epsilon=0.2,
                      loss_type="dapo", scale_rewards="group", max_steps=cfg.steps, logging_steps=1,
                      save_strategy="no", report_to="none", seed=seed, dataloader_num_workers=0, shuffle_dataset=False,
                      gradient_checkpointing=False)                  # TRL turns it on by default; grpo.py does not
    clock = Clock()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=Dataset.from_list(rows),
                          processing_class=proc, callbacks=[clock])
    torch.manual_seed(seed)
    trainer.train()
    return clock.dt[1:], clock.dcpu[1:], clock.len


def block(cfg: Config, out: str, seed: int) -> None:
    dt, cpu, ln = (ours if cfg.side == "grpo" else trl_run)(cfg, out, seed)
    print("BLOCK " + json.dumps({"dt": dt, "cpu": cpu, "len": ln}))


def speed(cfg: Config) -> None:
    """Alternating blocks, each in a fresh process (no state carried from one trainer to the other)."""
    import tempfile
    tmp = tempfile.mkdtemp(prefix="bench_grpo_")
    res = {"grpo.py": ([], [], []), "TRL GRPOTrainer": ([], [], [])}
    blocks = {"grpo.py": [], "TRL GRPOTrainer": []}                 # per-block median (wall, CPU) s / step
    for r in range(cfg.repeats):
        for name, side in (("grpo.py", "grpo"), ("TRL GRPOTrainer", "trl")):
            t0 = time.time()
            p = subprocess.run([sys.executable, __file__, "block", "--side", side, "--init", cfg.init, "--steps", str(cfg.steps),
                                "--max-new-tokens", str(cfg.max_new_tokens), "--runs", os.path.join(tmp, f"{side}{r}"),
                                "--seeds", str(r)], cwd=ROOT, capture_output=True, text=True)
            if p.returncode:
                raise SystemExit(f"bench_grpo.py: the {side} block failed:\n{p.stderr[-3000:]}")
            got = json.loads(p.stdout.split("BLOCK ")[-1])
            for i, k in enumerate(("dt", "cpu", "len")):
                res[name][i].extend(got[k])
            blocks[name].append((statistics.median(got["dt"]), statistics.median(got["cpu"])))
            print(f"{name}: block {r}: {statistics.median(got['dt']):.2f} s/step ({statistics.median(got['cpu']):.2f} "
                  f"CPU s), length {np.mean(got['len']):.1f} ({time.time() - t0:.0f}s)", flush=True)
    import trl
    import torch
    import transformers
    med = {k: statistics.median(v[0]) for k, v in res.items()}
    cpu = {k: statistics.median(v[1]) for k, v in res.items()}
    lines = [f"# grpo.py vs TRL GRPOTrainer ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), transformers "
             f"{transformers.__version__}, trl {trl.__version__}. Checkpoint `{cfg.init}`; 8 prompts × G 8 = 64 "
             f"completions per optimizer step, ≤ {cfg.max_new_tokens} new tokens, fp32, μ 1, β 0, token-level loss, "
             f"same reward; {cfg.repeats} alternating blocks of {cfg.steps} steps, each in a fresh process, first "
             "step of each dropped.", "",
             "| trainer | median s / optimizer step | median CPU s / step | steps timed | mean completion length |",
             "|---|---|---|---|---|"]
    for k, (dt, _, ln) in res.items():
        lines.append(f"| {k} | {med[k]:.2f} | {cpu[k]:.2f} | {len(dt)} | {np.mean(ln):.1f} |")
    g, t = "grpo.py", "TRL GRPOTrainer"
    lines += ["", f"Ratio grpo.py / TRL: **{med[g] / med[t]:.2f}** in wall time, {cpu[g] / cpu[t]:.2f} in CPU time "
              "(goal ≤ 1.0). CPU time is the robust figure when other jobs share the machine."]
    pair = [(a[0] / b[0], a[1] / b[1]) for a, b in zip(blocks[g], blocks[t])]   # block r of each side: same seed
    lines += ["", "Per alternating pair (block r of grpo.py / block r of TRL, same seed): wall "
              + ", ".join(f"{w:.2f}" for w, _ in pair) + f" (median {statistics.median(w for w, _ in pair):.2f}); CPU "
              + ", ".join(f"{c:.2f}" for _, c in pair) + f" (median {statistics.median(c for _, c in pair):.2f})."]
    write(cfg.out, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- acceptance
def accept(cfg: Config) -> None:
    seeds = [int(s) for s in cfg.seeds.split(",")]
    runs = {}
    for s in seeds:
        out = os.path.join(cfg.runs, f"seed{s}")
        cmd = [sys.executable, "grpo.py", "--init", cfg.init, "--out", out, "--seed", str(s), *cfg.grpo_args.split()]
        print("$", " ".join(cmd), flush=True)
        t0 = time.time()
        if subprocess.run(cmd, cwd=ROOT).returncode:
            raise SystemExit(f"bench_grpo.py: grpo.py failed for seed {s}")
        with open(os.path.join(ROOT, out, "metrics.json")) as f:
            runs[s] = json.load(f)
        with open(os.path.join(ROOT, out, "metrics.jsonl")) as f:
            runs[s]["curve"] = [json.loads(x) for x in f]
        runs[s]["wall"] = time.time() - t0
    keys = ["reason/format", "reason/exact", "reason/prefix", "reason/l1", "reason/direction"]
    lines = [f"# grpo.py acceptance runs ({time.strftime('%Y-%m-%d')})", "", f"Machine: {machine()}. Init `{cfg.init}`, "
             f"flags `{cfg.grpo_args or '(defaults)'}`; held-out = {runs[seeds[0]]['config']['eval_prompts']} val prompts, "
             "95 % intervals over prompts (change: paired).", ""]
    for s, m in runs.items():
        lines += [f"**seed {s}** — {m['rounds']} rounds, {m['seconds']:.0f} s of GRPO, {m['wall']:.0f} s wall in all "
                  f"({m['s_per_round']:.2f} s/round)", "",
                  "| metric | before | after | change (paired) | after, images shuffled |", "|---|---|---|---|---|"]
        for k in keys:
            if k in m["after"]:
                ch = m["change"][k]
                lines.append(f"| {k.split('/')[1]} | {m['before'][k][0]:.3f} | {m['after'][k][0]:.3f} | "
                             f"{ch[0]:+.3f} [{ch[1]:+.3f}, {ch[2]:+.3f}] | {m['after_image_shuffle'][k][0]:.3f} |")
        lines.append("")
    lines.append(f"![reward curve]({os.path.relpath(cfg.png, os.path.dirname(cfg.out) or '.')})")
    plot({s: [x["reward"] for x in m["curve"]] for s, m in runs.items()}, cfg.png)
    write(cfg.out, "\n".join(lines) + "\n")


def plot(curves: dict, path: str, w: int = 640, h: int = 360) -> None:
    """Mean reward per round, one line per seed (plus a 5-round moving average), drawn with pillow."""
    from PIL import Image, ImageDraw
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    L, R, T, B = 50, 20, 20, 40
    n = max(len(c) for c in curves.values())
    lo, hi = min(min(c) for c in curves.values()), max(max(c) for c in curves.values())
    lo, hi = (lo - 0.05, hi + 0.05) if hi > lo else (lo - 0.5, hi + 0.5)
    xy = lambda i, v: (L + (w - L - R) * i / max(n - 1, 1), T + (h - T - B) * (hi - v) / (hi - lo))  # noqa: E731
    d.rectangle([L, T, w - R, h - B], outline="black")
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        d.text((5, xy(0, v)[1] - 6), f"{v:.2f}", fill="black")
    d.text((w // 2 - 60, h - 25), f"round (1..{n})   mean reward r", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for j, (s, c) in enumerate(curves.items()):
        col = colours[j % len(colours)]
        d.line([xy(i, v) for i, v in enumerate(c)], fill=col, width=1)
        ma = np.convolve(c, np.ones(5) / 5, mode="valid") if len(c) >= 5 else c
        d.line([xy(i + (len(c) - len(ma)) // 2, v) for i, v in enumerate(ma)], fill=col, width=3)
        d.text((L + 10, T + 5 + 14 * j), f"seed {s}", fill=col)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)


def write(path: str, text: str) -> None:
    write_text(path, text)
    print(text)


if __name__ == "__main__":
    c = parse_config()
    c.out = c.out or os.path.join(ROOT, "bench", "results", "grpo_accept.md" if c.mode == "accept" else "grpo.md")
    if c.mode == "block":
        block(c, c.runs, int(c.seeds))
    else:
        speed(c) if c.mode == "speed" else accept(c)
