"""Representation probe (paper Tab. 8): does a backbone's hidden state tell where the robot is in its task?

Reads one or more backbone dirs (`--backbones`, loaded with `model.load_backbone`) and a demonstration set
(`--data`); writes `--out DIR`: `metrics.json` (every figure below, per backbone and label) and `results.md`
(the same as a Markdown table).

    python knn_probe.py                                              # tiny-vl vs SFT vs GRPO, ~10 k frames each
    python knn_probe.py --backbones out/sft,out/grpo --labels phase --k 20 --pool last
    python knn_probe.py --suites long --frame-stride 1 --out out/knn_long    # one suite, every frame
    python knn_probe.py --backbones base,sft,grpo0,grpo1 --pairs 1-0,2-1,3-1  # GRPO seeds each against the SFT

What it measures. Every `--frame-stride`-th frame of the demos goes through the frozen backbone exactly as
vla_train.py feeds it (upright agentview + the instruction, `vla_train.encode`; layer `--layer`, default the
same relative depth as vla_train.py, `vla_train.default_layer`); the hidden states are mean-pooled over every
real token (image and text) or, with --pool last, taken at the last token. Frames of the *train* episodes form
the k-NN memory; frames of the held-out *val* episodes are the queries. Each query gets the majority label of
its k nearest memory frames by cosine similarity (--center subtracts the memory's mean feature first, the
component every hidden state shares). Labels come from privileged world state, never from the image:
  * phase    — the scripted expert's phase, reduced to its verb class (move above, lower, grasp, lift, carry,
               place, release, retreat, approach, push/pull, turn; PHASE_CLASSES below);
  * position — where the gripper is relative to the body the current phase names (carried forward through
               phases that name none), each axis binned at ±--pos-tol metres: e.g. "x0 y- z+" = centred left/right,
               in front of it (towards the camera), above it.

Next to each accuracy: its 95 % interval by bootstrap over query *episodes* (frames of one episode are
correlated, so a per-frame Wilson interval would be too narrow), the majority-class baseline (the memory's
most frequent label for every query), chance (1 / number of classes), and an image-shuffled control: the same
queries with each frame's image swapped for one from another held-out episode (the prompt stays). If the
accuracy falls to the shuffled figure, the backbone reads the phase from the instruction, not the image.
Between backbones (`--pairs`, default each minus the one before it): the paired change, i.e. the difference of
the two backbones' hits on the same queries, bootstrapped by query episode, which resolves far smaller changes
than two separate intervals do.

Differences from the paper's probe: the paper labels states by DTW alignment of robot states and uses 20
trajectories of one LIBERO long-horizon task; here the labels are the expert's phases and gripper-to-target
geometry, and the probe runs over every suite's held-out episodes (hundreds of trajectories).

Cost: one backbone forward per frame, three passes (memory, queries, shuffled queries). The long-suite command
above (2,150 frames per backbone) took ~60 s per backbone on the shared 2-core CPU; the default (~10 k frames per
backbone) scales accordingly.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from data.demos import DemoDataset
import config
from config import arg, exits_on_bad_files, write_json, write_text
from model import load_backbone
from samples import task_worlds
from vla_train import default_layer, encode, vla_prompt


@dataclass
class Config:
    backbones: str = arg("assets/tiny-vl,out/sft,out/grpo", "comma-separated backbone dirs to probe")
    data: str = arg("out/demos", "demonstration dataset: train episodes = memory, val episodes = queries")
    out: str = arg("out/knn", "output directory (metrics.json, results.md)")
    labels: str = arg("phase,position", "comma-separated labels: phase (expert's verb class), position (gripper vs target)")
    pool: str = arg("mean", "mean (over every real token, image and text) | last (the last prompt token)")
    layer: int = arg(-1, "hidden-state index (-1: vla_train.py's default, round(18/28 · decoder layers))")
    prompt: str = arg("instruction", "what the backbone reads besides the image, as vla_train.py: instruction | reasoning")
    k: int = arg(10, "neighbours per query (majority vote; ties go to the label with the nearest members)")
    center: bool = arg(True, "subtract the memory's mean feature before cosine similarity")
    frame_stride: int = arg(4, "use every k-th frame of each episode")
    suites: str = arg("", "comma-separated suites to probe ('' = all in --data)")
    pos_tol: float = arg(0.03, "position label: per-axis dead band in metres (|Δ| below it = centred)")
    n_boot: int = arg(1000, "bootstrap resamples over query episodes for the 95 % interval")
    batch: int = arg(32, "frames per backbone forward")
    seed: int = arg(0, "seed of the shuffled control and the bootstrap")
    pairs: str = arg("", "paired changes as later-earlier indices into --backbones, e.g. '1-0,2-1,3-1' ('' = each "
                         "backbone minus the one before it)")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


LABELS = ("phase", "position")


def check(cfg: Config) -> None:
    bad = [(not cfg.backbones.strip(", "), "--backbones is empty"),
           (set(cfg.labels.split(",")) - set(LABELS) or not cfg.labels,
            f"--labels {cfg.labels!r}: choose from {', '.join(LABELS)}"),
           (cfg.pool not in ("mean", "last"), f"--pool {cfg.pool!r}: choose mean or last"),
           (min(cfg.k, cfg.frame_stride, cfg.batch, cfg.n_boot) < 1, "--k, --frame-stride, --batch, --n-boot must be ≥ 1"),
           (cfg.pos_tol <= 0, "--pos-tol must be > 0")]
    n = len([b for b in cfg.backbones.split(",") if b.strip()])
    try:
        pairs = parse_pairs(cfg.pairs, n)
    except ValueError:
        pairs = None
    bad.append((pairs is None or any(not (0 <= i < n and 0 <= j < n and i != j) for i, j in pairs),
                f"--pairs {cfg.pairs!r}: expected later-earlier indices into the {n} backbones, e.g. 1-0,2-1"))
    for failed, msg in bad:
        if failed:
            raise SystemExit(f"knn_probe.py: {msg}")


def parse_pairs(s: str, n: int) -> list[tuple[int, int]]:
    """'2-1,3-1' → [(2, 1), (3, 1)]; '' → each backbone minus the one before it. ValueError if malformed."""
    if not s.strip():
        return [(i, i - 1) for i in range(1, n)]
    pairs = [tuple(int(x) for x in p.split("-")) for p in s.split(",") if p.strip()]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(s)
    return pairs


# ----------------------------------------------------------------------------- labels from privileged state
PHASE_CLASSES = [  # (prefix of the expert's phase string, class); first match wins, so order matters
    ("move above", "move above"), ("lower the gripper", "lower"), ("grasp", "grasp"), ("lift", "lift"),
    ("carry", "carry"), ("lower it", "place"), ("release", "release"), ("move the gripper", "retreat"),
    ("move to", "approach"), ("push", "push/pull"), ("pull", "push/pull"), ("turn", "turn")]


def phase_class(phase: str) -> str:
    """'grasp the black bowl' → 'grasp'; phases without a verb class here ('start', 'done') → 'other'."""
    for prefix, name in PHASE_CLASSES:
        if phase.startswith(prefix):
            return name
    return "other"


def phase_targets(phases, labels: dict, first: int) -> list[int]:
    """Body index per step: the body whose label the phase names (the longest label found in the text wins:
    'the black bowl' over 'the bowl'), carried forward through phases that name none ('release');
    `first` before any phase names one."""
    by_len = sorted(labels.items(), key=lambda kv: -len(kv[0]))
    out, cur = [], first
    for p in phases:
        cur = next((i for lab, i in by_len if lab in p), cur)
        out.append(cur)
    return out


def position_label(delta, tol: float) -> str:
    """Gripper minus target [dx, dy, dz] → 'x+ y0 z-': per axis +, - or 0 (|Δ| < tol)."""
    return " ".join(f"{a}{'0' if abs(d) < tol else '+-'[int(d < 0)]}" for a, d in zip("xyz", delta))


def collect(ds: DemoDataset, episodes: list[int], cfg: Config) -> dict:
    """Every frame_stride-th frame of the episodes: image, prompt, episode id and every label."""
    worlds = task_worlds(ds)
    rows = {"img": [], "text": [], "episode": [], "phase": [], "position": []}
    for e in episodes:
        rec = ds.episodes[e]
        ep = ds.load(e, ["agentview_rgb", "sim_state", "phase"])
        world, plan = worlds[(rec["suite"], rec["task_id"])]
        names = {b.label.removeprefix("the "): i for i, b in enumerate(world.bodies)}
        phases = [str(p) for p in ep["phase"]]
        targets = phase_targets(phases, names, world.index[plan[0][1]])
        for t in range(0, len(phases), cfg.frame_stride):
            world.set_state(ep["sim_state"][t])
            i = targets[t]
            centre = world.pos[i] + [0.0, 0.0, world.bodies[i].h / 2]
            rows["img"].append(ep["agentview_rgb"][t])
            rows["text"].append(vla_prompt(rec["language"], cfg.prompt))
            rows["episode"].append(e)
            rows["phase"].append(phase_class(phases[t]))
            rows["position"].append(position_label(world.eef_pos - centre, cfg.pos_tol))
    rows["episode"] = np.array(rows["episode"])
    return rows


def shuffled_images(episodes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For every frame, the index of a frame from a *different* episode (uniform among them)."""
    out = np.empty(len(episodes), int)
    for j, e in enumerate(episodes):
        others = np.flatnonzero(episodes != e)
        out[j] = rng.choice(others) if len(others) else j            # one episode only: nothing to swap with
    return out


# ----------------------------------------------------------------------------- features and the k-NN
@torch.no_grad()
def features(model, proc, images, texts, layer: int, pool: str, batch: int = 32, desc: str = "features") -> np.ndarray:
    """[N, C] float32: hidden states at `layer`, mean-pooled over real tokens or taken at the last token
    (prompts are left-padded, so position -1 is every row's last real token)."""
    out = []
    for i in tqdm(range(0, len(texts), batch), desc=desc, leave=False):
        h, m = encode(model, proc, images[i:i + batch], None, texts[i:i + batch], layer, "cpu")   # [B, L, C], [B, L]
        if pool == "mean":
            f = (h * m[..., None]).sum(1) / m.sum(1, keepdim=True)
        else:
            f = h[:, -1]
        out.append(f.float().numpy())
    return np.concatenate(out)


def knn_predict(memory: np.ndarray, mem_labels: np.ndarray, queries: np.ndarray, k: int, center: bool = False,
                chunk: int = 1024) -> np.ndarray:
    """Majority label of each query's k nearest memory rows by cosine similarity. Labels are ints ≥ 0.
    Ties between labels go to the one whose members among the k are nearer (higher summed similarity)."""
    if center:
        mu = memory.mean(0, keepdims=True)
        memory, queries = memory - mu, queries - mu
    unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    memory, queries = unit(memory.astype(np.float64)), unit(queries.astype(np.float64))
    k, n_cls = min(k, len(memory)), int(mem_labels.max()) + 1
    preds = []
    for q in range(0, len(queries), chunk):
        sims = queries[q:q + chunk] @ memory.T                                   # [Q, M]
        nn_idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]                    # [Q, k], unordered
        nn_sim = np.take_along_axis(sims, nn_idx, 1)
        rows = np.repeat(np.arange(len(sims)), k)
        votes, near = np.zeros((len(sims), n_cls)), np.zeros((len(sims), n_cls))
        np.add.at(votes, (rows, mem_labels[nn_idx].ravel()), 1)
        np.add.at(near, (rows, mem_labels[nn_idx].ravel()), nn_sim.ravel())
        preds.append(np.argmax(votes * (2 * k + 1) + (near + k) * (votes > 0), axis=1))   # near + k ∈ [0, 2k]
    return np.concatenate(preds)


def bootstrap_ci(correct, groups, n_boot: int = 1000, seed: int = 0) -> list:
    """[mean, low, high]: the pooled mean of per-frame values (hits 0/1, or the differences of two backbones' hits)
    and its 95 % percentile interval, resampling whole groups (query episodes) with replacement."""
    correct, groups = np.asarray(correct, float), np.asarray(groups)
    ug, inv = np.unique(groups, return_inverse=True)
    hits, count = np.bincount(inv, correct, len(ug)), np.bincount(inv, minlength=len(ug)).astype(float)
    idx = np.random.default_rng(seed).integers(0, len(ug), (n_boot, len(ug)))
    acc = hits[idx].sum(1) / count[idx].sum(1)
    lo, hi = np.percentile(acc, [2.5, 97.5])
    return [float(correct.mean()), float(lo), float(hi)]


# ----------------------------------------------------------------------------- output
def fmt_ci(v, f: str = ".3f") -> str:
    return f"{v[0]:{f}} [{v[1]:{f}}, {v[2]:{f}}]"


def markdown(metrics: dict) -> str:
    c = metrics["config"]
    lines = ["# k-NN probe (paper Tab. 8)\n",
             f"{metrics['memory_frames']} memory frames from {metrics['memory_episodes']} train episodes, "
             f"{metrics['query_frames']} query frames from {metrics['query_episodes']} held-out episodes of `{c['data']}`; "
             f"k = {c['k']}, cosine{' (centred)' if c['center'] else ''}, pool {c['pool']}, prompt {c['prompt']}. "
             f"Intervals: 95 % bootstrap over query episodes.\n",
             "| backbone | layer | label | classes | k-NN accuracy | images shuffled | majority | chance |",
             "|---|---|---|---|---|---|---|---|"]
    for name, b in metrics["backbones"].items():
        for lab, r in b["labels"].items():
            L = metrics["labels"][lab]
            lines.append(f"| `{name}` | {b['layer']} | {lab} | {len(L['classes'])} | **{fmt_ci(r['accuracy'])}** | "
                         f"{fmt_ci(r['image_shuffled'])} | {fmt_ci(L['majority'])} | {L['chance']:.3f} |")
    if metrics.get("paired"):
        lines += ["\nPaired changes: the same queries and memory frames through both backbones; 95 % bootstrap over "
                  "query episodes of the difference in accuracy.\n", "| change | label | k-NN accuracy | images shuffled |",
                  "|---|---|---|---|"]
        lines += [f"| `{p['later']}` − `{p['earlier']}` | {lab} | **{fmt_ci(r['accuracy'], '+.3f')}** | "
                  f"{fmt_ci(r['image_shuffled'], '+.3f')} |" for p in metrics["paired"] for lab, r in p["labels"].items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main
@exits_on_bad_files("knn_probe.py")
def main(cfg: Config) -> dict:
    check(cfg)
    t0 = time.time()
    ds = DemoDataset(cfg.data)
    suites = set(filter(None, cfg.suites.split(",")))
    pick = lambda split: [e for e in ds.indices(split) if not suites or ds.episodes[e]["suite"] in suites]
    mem_eps, query_eps = pick("train"), pick("val")
    if not mem_eps or not query_eps:
        raise SystemExit(f"knn_probe.py: {cfg.data} has {len(mem_eps)} train and {len(query_eps)} val episodes"
                         f"{' in ' + cfg.suites if suites else ''}; both must be > 0")
    mem, qry = collect(ds, mem_eps, cfg), collect(ds, query_eps, cfg)
    rng = np.random.default_rng(cfg.seed)
    swap = shuffled_images(qry["episode"], rng)
    labels = cfg.labels.split(",")
    metrics = {"config": asdict(cfg), "memory_frames": len(mem["text"]), "memory_episodes": len(mem_eps),
               "query_frames": len(qry["text"]), "query_episodes": len(query_eps), "labels": {}, "backbones": {}}
    ids = {}
    for lab in labels:                                  # class names → ints (memory and queries share the map)
        names = sorted(set(mem[lab]) | set(qry[lab]))
        ids[lab] = {n: i for i, n in enumerate(names)}
        m_y = np.array([ids[lab][x] for x in mem[lab]])
        q_y = np.array([ids[lab][x] for x in qry[lab]])
        majority = np.bincount(m_y, minlength=len(names)).argmax()
        metrics["labels"][lab] = {"classes": {n: int((m_y == i).sum()) for n, i in ids[lab].items()},
                                  "majority_class": names[majority],
                                  "majority": bootstrap_ci(q_y == majority, qry["episode"], cfg.n_boot, cfg.seed),
                                  "chance": 1.0 / len(names)}
    print(f"knn_probe.py | memory {len(mem['text'])} frames / {len(mem_eps)} episodes | queries {len(qry['text'])} "
          f"frames / {len(query_eps)} episodes | labels {labels} | k {cfg.k} | pool {cfg.pool} | data {time.time() - t0:.0f}s")

    paths = [b.strip() for b in cfg.backbones.split(",") if b.strip()]
    correct = {}                                        # path → {label: {queries, shuffled: per-query 0/1}}
    for path in paths:
        t1 = time.time()
        model, proc, _, _ = load_backbone(path, need_actions=False)
        model.eval().requires_grad_(False)
        proc.tokenizer.padding_side = "left"
        layer = cfg.layer if cfg.layer >= 0 else default_layer(model)
        if not 0 <= layer <= model.config.text_config.num_hidden_layers:
            raise SystemExit(f"knn_probe.py: --layer {layer} outside 0..{model.config.text_config.num_hidden_layers} for {path}")
        feat = lambda imgs, rows, d: features(model, proc, imgs, rows["text"], layer, cfg.pool, cfg.batch, d)
        f_mem = feat(mem["img"], mem, f"{path}: memory")
        f_qry = feat(qry["img"], qry, f"{path}: queries")
        f_shf = feat([qry["img"][j] for j in swap], qry, f"{path}: shuffled")
        res = {"layer": layer, "labels": {}}
        for lab in labels:
            m_y = np.array([ids[lab][x] for x in mem[lab]])
            q_y = np.array([ids[lab][x] for x in qry[lab]])
            hit = {kind: knn_predict(f_mem, m_y, f_q, cfg.k, cfg.center) == q_y
                   for kind, f_q in (("accuracy", f_qry), ("image_shuffled", f_shf))}
            correct.setdefault(path, {})[lab] = hit
            res["labels"][lab] = {kind: bootstrap_ci(h, qry["episode"], cfg.n_boot, cfg.seed) for kind, h in hit.items()}
        res["seconds"] = round(time.time() - t1, 1)
        metrics["backbones"][path] = res
        print(f"{path} (layer {layer}, {res['seconds']:.0f}s): " + " | ".join(
            f"{lab} {fmt_ci(r['accuracy'])}, shuffled {r['image_shuffled'][0]:.3f}, majority "
            f"{metrics['labels'][lab]['majority'][0]:.3f}" for lab, r in res["labels"].items()))
        feat = model = proc = None                      # free this backbone before loading the next
    # Paired changes: both backbones saw the same queries, so the difference per query (−1, 0, +1) is resampled by
    # episode together, and the interval is far tighter than the two separate intervals suggest.
    metrics["paired"] = [{"later": paths[i], "earlier": paths[j], "labels": {
        lab: {kind: bootstrap_ci(correct[paths[i]][lab][kind].astype(float) - correct[paths[j]][lab][kind],
                                 qry["episode"], cfg.n_boot, cfg.seed) for kind in ("accuracy", "image_shuffled")}
        for lab in labels}} for i, j in parse_pairs(cfg.pairs, len(paths))]
    metrics["seconds"] = round(time.time() - t0, 1)
    os.makedirs(cfg.out, exist_ok=True)
    write_json(os.path.join(cfg.out, "metrics.json"), metrics)
    write_text(os.path.join(cfg.out, "results.md"), markdown(metrics))
    print(markdown(metrics))
    print(f"wrote {cfg.out} ({metrics['seconds']:.0f}s)")
    return metrics


if __name__ == "__main__":
    main(parse_config())
