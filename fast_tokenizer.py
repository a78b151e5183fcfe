"""
fast_tokenizer.py -- the FAST action tokenizer (Pertsch et al., arXiv 2501.09747), written by hand.

An action chunk [T, D] becomes a short list of token ids in 0..vocab_size-1, and back:
    quantile-normalise -> DCT-II along time -> x scale, round -> flatten low frequency first
    -> BPE over the integers (no pre-tokeniser, no bytes)
Only numpy; independent of transformers (the MLLM stage maps these ids into its own vocabulary).

Reads  --data: the mini-LIBERO demos (python -m data.mini_libero demos --out out/demos), LIBERO HDF5
       files or a LeRobot dataset (data.demos.open_dataset), split "train" to fit and "val" to measure.
Writes OUT/fast_tokenizer.json  the tokenizer as one human-readable JSON (FastTokenizer.load)
       OUT/metrics.json         tokens per chunk, compression, reconstruction error, fit time

    python fast_tokenizer.py                                    # demos, T=5, vocab 1024: seconds on a CPU
    python fast_tokenizer.py --synthetic 20000 --out out/fast_synth   # no demos needed
    python fast_tokenizer.py --data DIR --vocab-size 2048       # full size / FAST+ vocab: 200k chunks
                                                                # fit in ~12 s and ~2 GB on one core
    python bench/bench_fast.py                                  # vs a scipy + HF-tokenizers reference

    tok = FastTokenizer.fit(chunks, vocab_size=1024, scale=10.0)   # chunks [N, T, D] raw units
    ids = tok.encode(chunks); actions, valid = tok.decode(ids, relaxed=False)

Choices (the reference is processing_action_tokenizer.py in huggingface.co/physical-intelligence/fast):
- Normalisation: per dimension the training 1st/99th percentiles map to -1/+1. Values outside are
  NOT clipped (as the reference and openpi): ~2% of values lie outside by construction and clipping
  them would flatten the fastest motions. Their larger coefficients are covered by the alphabet.
  A (near-)constant dimension keeps a unit half-range instead of dividing by ~0.
- Gripper (`gripper_dim`, default 6, -1 for none): binary -1/+1 in LIBERO. Quantiles collapse when one
  state holds <1% of the steps, so its range is the training min/max (the identity for -1/+1). It is
  DCT-coded like the other dims (a step rings after quantisation) and decode snaps it to the nearer of
  min/max, so a decoded gripper is exactly binary.
- DCT: orthonormal type II as a cached T x T matrix C (coef = C @ x); C.T is the exact inverse.
- Rounding: np.rint, half to even (np.around in the reference). Per-coefficient error <= 0.5/scale.
- Scale and horizon, chosen by bench/fast_predictability.py (a 1-NN on the privileged world state: how many of
  the next chunk's tokens any model could get right from what a frame shows), on the libero-layout demos:
      scale 2, T 10: 3.7 tokens/chunk, RMS 0.067 (normalised), 1-NN prefix ratio 0.37
      scale 1, T 10: 1.7 tokens/chunk, RMS 0.120,              1-NN prefix ratio 0.50
      scale 2, T  5: 1.5 tokens/chunk, RMS 0.068,              1-NN prefix ratio 0.57   <- the default
  Past the first five steps the expert's next moves depend on what no frame shows yet (the height and wrist
  yaw an operator picks for the next primitive, how long it holds), so a 10-step target puts a coin flip in
  the tokens; 5 steps is also the part of a chunk that is executed before the policy replans (openpi's
  replan_steps) and BridgeV2's one-second chunk. The paper's/openpi's scale is 10 (`--scale 10`): ~60 levels
  of mean velocity per axis in the first token, more than a 4 M backbone reading a 128 px image can resolve.
  The VLA's diffusion head never decodes FAST, so its own horizon (vla_train.py --horizon, 10) is separate.
- Flattening: row-major over [T, D] = frequency-major, dims interleaved (the paper's order).
- Alphabet: the integer range seen in fitting widened by `margin` on each side; id = value - min_token.
  Coefficients outside it are clipped at encode (the reference drops those above and clamps those
  below, silently); metrics.json counts them (clip_frac).
- BPE: merges learned by pair frequency, any symbols may merge (no category splitting as in the
  reference's ByteLevel pre-tokeniser), min count 2 (as the reference), ties to the lowest
  (left, right) id pair. `vocab_size` counts the alphabet; fitting stops early if no pair repeats.
  Encoding applies the merges in rank order over the whole batch (bpe_encode says why that equals
  standard BPE).
- Decode never raises. A sequence is valid iff all ids are in 0..vocab_size-1 and they expand to
  exactly T*D coefficients. Invalid -> all-zero coefficients (the centre of the normalised range,
  gripper at min = open), as the reference. relaxed=True instead drops bad ids and zero-pads or
  truncates the coefficients to T*D (LeRobot's relaxed_decoding); `valid` means the same in both modes.
  T and D are fixed at fit time and saved; nothing is cached between calls.
"""
import heapq
import json
import operator
import os
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

import config
from config import arg, exits_on_bad_files, write_json, write_text


@dataclass
class Config:
    data: str = arg("out/demos", "dataset to fit on: mini-LIBERO demos, LIBERO HDF5 files or a LeRobot dataset")
    data_format: str = arg("auto", "format of --data: auto | mini | libero_hdf5 | lerobot")
    drop_noops: bool = arg(False, "drop no-op steps from the demos (OpenVLA's filter)")
    out: str = arg("out/fast", "directory for fast_tokenizer.json and metrics.json")
    horizon: int = arg(5, "chunk length T in steps (5: what one frame determines; see the docstring)")
    vocab_size: int = arg(1024, "token ids incl. the integer alphabet (paper 1024; FAST+ 2048)")
    scale: float = arg(2.0, "DCT coefficients are multiplied by this before rounding (paper/openpi 10; see the docstring)")
    margin: int = arg(8, "integers added to each end of the fitted coefficient range")
    gripper_dim: int = arg(6, "binary gripper dimension: min/max range, snapped at decode (-1: none)")
    synthetic: int = arg(0, "fit on this many synthetic chunks instead of --data (0: use the dataset)")
    relaxed: bool = arg(False, "decode the truncated-sequence probe in metrics.json with relaxed decoding")
    seed: int = arg(0, "seed for --synthetic data")


def parse_config(argv=None) -> Config:
    return config.parse_config(Config, argv, __doc__)


# ----------------------------------------------------------------------------- DCT

@lru_cache(maxsize=None)
def dct_matrix(T: int) -> np.ndarray:
    """Orthonormal DCT-II, [T freq k, T time t]: coef = C @ x and x = C.T @ coef (C @ C.T = I)."""
    t = np.arange(T)
    C = np.sqrt(2.0 / T) * np.cos(np.pi * (2 * t[None, :] + 1) * t[:, None] / (2 * T))
    C[0] /= np.sqrt(2.0)                      # the k=0 row has norm sqrt(1/T) * sqrt(T) = 1
    C.setflags(write=False)                   # cached and shared: nobody may modify it
    return C


# ----------------------------------------------------------------------------- BPE over integers
# Sequences all have length S = T*D. They are flattened into one array `sym` with next/prev links,
# so a merge costs O(occurrences) and never moves memory. Pair (a, b) has id a * V + b.

class _Linked:
    def __init__(self, seqs: np.ndarray):     # seqs [N, S] symbol ids
        N, S = seqs.shape
        p = np.arange(N * S)
        self.sym = seqs.astype(np.int64).ravel()            # [L] token id, -1 once merged away
        self.nxt = np.where(p % S == S - 1, -1, p + 1)      # [L] next live position, -1 at the end
        self.prv = np.where(p % S == 0, -1, p - 1)          # [L] previous live position, -1 at start

    def pair_ids(self, pos, V):
        return self.sym[pos] * V + self.sym[self.nxt[pos]]

    def merge(self, cand, a, b, c, V):
        """Merge every (a, b) starting at candidate positions `cand` (any order, may be stale) into c,
        left to right. Returns the positions and pair ids of the pairs destroyed, then of those created;
        each pair once (the masks below drop the duplicates that adjacent occurrences would give)."""
        sym, nxt, prv = self.sym, self.nxt, self.prv
        n = nxt[cand]
        cand = cand[(sym[cand] == a) & (n >= 0) & (sym[n] == b)]   # stale entries fail this
        if a == b and len(cand) > 1:          # a run "a a a a" lists 3 starts; keep the 1st and 3rd
            cand = np.sort(cand)
            chained = np.r_[False, nxt[cand[:-1]] == cand[1:]]
            k = np.arange(len(cand))
            run_start = np.maximum.accumulate(np.where(chained, 0, k))
            cand = cand[(k - run_start) % 2 == 0]
        i, j = cand, nxt[cand]                # i keeps the merged token, j is deleted
        p, nj = prv[i], nxt[j]
        sym[j] = -1                           # first, so that a left neighbour in j shows as -1
        lp = p[p >= 0]
        lp = lp[sym[lp] >= 0]                 # (x, a) pairs; a deleted neighbour's pair is its (b, a)
        rj, rn = j[nj >= 0], nj[nj >= 0]
        old = np.concatenate([lp, i, rj])
        old_pid = np.concatenate([sym[lp] * V + a, np.full(len(i), a * V + b), b * V + sym[rn]])
        sym[i], nxt[i] = c, nj                # splice j out of the list
        prv[rn] = i[nj >= 0]
        lp = prv[i]
        lp = lp[lp >= 0]
        lp = lp[sym[lp] != c]                 # (c, c) of two adjacent merges is counted once, on the right
        ri = i[nj >= 0]
        new = np.concatenate([lp, ri])
        return old, old_pid, new, np.concatenate([sym[lp] * V + c, c * V + sym[rn]])


def _group(index: dict, keys: np.ndarray, pos: np.ndarray) -> list:
    """index[key] += positions with that key; returns keys that were not in the index before."""
    if len(keys) == 0: return []
    order = np.argsort(keys, kind="stable")   # radix sort when keys fit in 16 bits
    keys, pos = keys[order], pos[order]
    cut = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    starts, ends = np.r_[0, cut].tolist(), np.r_[cut, len(keys)].tolist()
    fresh = []
    for k, s, e in zip(keys[starts].tolist(), starts, ends):
        if k not in index: index[k] = []; fresh.append(k)
        index[k].append(pos[s:e])
    return fresh


def bpe_fit(seqs: np.ndarray, n_symbols: int, vocab_size: int, min_count: int = 2) -> list:
    """Learn merges on seqs [N, S] of ids in 0..n_symbols-1. Merge k creates id n_symbols + k.
    Identical sequences are counted once with a weight; pair counts live in a dense [V, V] matrix
    and are updated only at positions around each merge; a per-pair position index finds them."""
    V = vocab_size
    uniq, weight = np.unique(seqs, axis=0, return_counts=True)       # [U, S], [U]
    lk = _Linked(uniq)
    w = np.repeat(weight, uniq.shape[1]).astype(np.int64)             # [L] weight of each position
    pos = np.flatnonzero(lk.nxt >= 0)
    left, right = lk.sym[pos], lk.sym[lk.nxt[pos]]
    count = np.zeros(V * V, np.int64)         # [V*V] weighted count of each pair id
    np.add.at(count, left * V + right, w[pos])
    count2 = count.reshape(V, V)              # a view: rows = left id, cols = right id
    index = {}                                # pair id -> list of position arrays (entries may be stale)
    small = left * n_symbols + right          # group by a compact key: a radix sort if < 2**16
    _group(index, small.astype(np.uint16) if n_symbols <= 256 else small, pos)
    index = {(k // n_symbols) * V + k % n_symbols: v for k, v in index.items()}
    rowmax = count2.max(1)                    # [V] best count per left id, refreshed where it changes
    merges = []
    for c in range(n_symbols, V):
        a = int(rowmax.argmax())
        b = int(count2[a].argmax())           # lowest (a, b) among ties: deterministic
        if count2[a, b] < min_count: break
        old, old_pid, new, new_pid = lk.merge(np.concatenate(index.pop(a * V + b)), a, b, c, V)
        np.subtract.at(count, old_pid, w[old])
        np.add.at(count, new_pid, w[new])
        _group(index, new_pid, new)
        rows = np.flatnonzero(np.bincount(np.concatenate([old_pid, new_pid]) // V, minlength=V))
        rowmax[rows] = count2[rows].max(1)
        merges.append((a, b))
    return merges


def bpe_encode(seqs: np.ndarray, merges: list, n_symbols: int, rank: np.ndarray) -> list:
    """Encode seqs [N, S] (ids < n_symbols) by applying merges in rank order, all sequences at once.
    This equals standard BPE ("repeatedly merge the lowest-rank pair present, leftmost first"):
    merging rank r only creates pairs that contain the new token, and every merge that uses a token
    was learned after it, so those pairs have ranks > r. The lowest rank present therefore never
    decreases, and standard BPE does all of rank r (left to right) before any higher rank: exactly
    one rank-order pass. A heap holds the ranks that have candidate positions; rank: [V*V] or -1."""
    V = n_symbols + len(merges)
    lk = _Linked(seqs)
    pos = np.flatnonzero(lk.nxt >= 0)
    r = rank[lk.pair_ids(pos, V)]
    keep = r >= 0
    index = {}
    heap = _group(index, r[keep].astype(np.uint16 if V <= 65536 else np.int64), pos[keep])
    heapq.heapify(heap)
    while heap:
        k = heapq.heappop(heap)
        a, b = merges[k]
        _, _, new, new_pid = lk.merge(np.concatenate(index.pop(k)), a, b, n_symbols + k, V)
        r = rank[new_pid]
        for k2 in _group(index, r[r >= 0], new[r >= 0]): heapq.heappush(heap, k2)
    live = lk.sym >= 0
    flat = lk.sym[live].tolist()
    ends = np.cumsum(live.reshape(seqs.shape).sum(1)).tolist()
    return [flat[s:e] for s, e in zip([0] + ends[:-1], ends)]


# ----------------------------------------------------------------------------- the tokenizer

class FastTokenizer:
    FORMAT = "nanoRoboAlign.fast_tokenizer/1"

    def __init__(self, *, time_horizon, action_dim, scale, min_token, n_symbols, merges,
                 norm_low, norm_high, gripper_dim=-1):
        self.time_horizon, self.action_dim, self.scale = int(time_horizon), int(action_dim), float(scale)
        self.min_token, self.n_symbols, self.gripper_dim = int(min_token), int(n_symbols), int(gripper_dim)
        self.merges = [(int(a), int(b)) for a, b in merges]
        self.norm_low = np.asarray(norm_low, np.float64)      # [D] q01 (gripper: min)
        self.norm_high = np.asarray(norm_high, np.float64)    # [D] q99 (gripper: max)
        half = (self.norm_high - self.norm_low) / 2
        self._centre, self._half = self.norm_low + half, np.where(half > 1e-6, half, 1.0)
        # vocab[i]: the integer coefficients token i stands for; flat tables for vectorised decode
        self.vocab = [[v] for v in range(self.min_token, self.min_token + self.n_symbols)]
        for a, b in self.merges: self.vocab.append(self.vocab[a] + self.vocab[b])
        self._len = np.array([len(v) for v in self.vocab])
        self._start = np.r_[0, np.cumsum(self._len)[:-1]]
        self._flat = np.concatenate([np.asarray(v, np.int64) for v in self.vocab])
        V = self.vocab_size                    # rank of each pair id a*V+b, -1 if not a merge
        self._rank = np.full(V * V, -1, np.int32)
        for k, (a, b) in enumerate(self.merges): self._rank[a * V + b] = k

    @property
    def vocab_size(self) -> int:
        return self.n_symbols + len(self.merges)

    @classmethod
    def fit(cls, chunks, vocab_size=1024, scale=10.0, margin=8, gripper_dim=6, min_count=2):
        chunks = _check_chunks(chunks)
        N, T, D = chunks.shape
        if not -1 <= gripper_dim < D: raise ValueError(f"gripper_dim {gripper_dim} not in -1..{D - 1}")
        flat = chunks.reshape(-1, D)
        low, high = np.quantile(flat, 0.01, axis=0), np.quantile(flat, 0.99, axis=0)
        if gripper_dim >= 0: low[gripper_dim], high[gripper_dim] = flat[:, gripper_dim].min(), flat[:, gripper_dim].max()
        tok = cls(time_horizon=T, action_dim=D, scale=scale, min_token=0, n_symbols=1, merges=[],
                  norm_low=low, norm_high=high, gripper_dim=gripper_dim)
        coef = tok.coefficients(chunks)                          # [N, T*D] ints
        lo, hi = int(coef.min()) - margin, int(coef.max()) + margin
        if hi - lo + 1 > vocab_size:
            raise ValueError(f"alphabet of {hi - lo + 1} integers does not fit vocab_size {vocab_size}")
        merges = bpe_fit(coef - lo, hi - lo + 1, vocab_size, min_count)
        return cls(time_horizon=T, action_dim=D, scale=scale, min_token=lo, n_symbols=hi - lo + 1,
                   merges=merges, norm_low=low, norm_high=high, gripper_dim=gripper_dim)

    def normalize(self, x):                   # raw [..., D] -> normalised, q01..q99 -> -1..1
        return (np.asarray(x, np.float64) - self._centre) / self._half

    def denormalize(self, n):
        return n * self._half + self._centre

    def coefficients(self, chunks) -> np.ndarray:
        """[N, T, D] raw -> [N, T*D] int64: rounded scaled DCT, flattened frequency-major (unclipped)."""
        coef = np.einsum("kt,ntd->nkd", dct_matrix(self.time_horizon), self.normalize(chunks))
        return np.rint(coef * self.scale).astype(np.int64).reshape(len(coef), -1)

    def encode(self, chunks, batch=1 << 16) -> list:
        """[N, T, D] raw actions -> N lists of ids. Coefficients outside the alphabet are clipped.
        Batches of `batch` chunks bound the memory (~100 bytes per coefficient)."""
        chunks = _check_chunks(chunks, self.time_horizon, self.action_dim)
        ids = []
        for s in range(0, len(chunks), batch):
            sym = np.clip(self.coefficients(chunks[s:s + batch]) - self.min_token, 0, self.n_symbols - 1)
            ids += bpe_encode(sym, self.merges, self.n_symbols, self._rank)
        return ids

    def decode(self, ids, relaxed=False):
        """N lists of ids -> (actions [N, T, D] float32 raw units, valid [N] bool). Never raises."""
        T, D, S, V = self.time_horizon, self.action_dim, self.time_horizon * self.action_dim, self.vocab_size
        tok, n_tok = _flatten_ids(ids)                          # [sum n_tok], [N]
        N = len(n_tok)
        seq_of = np.repeat(np.arange(N), n_tok)                  # [sum n_tok] sequence of each id
        ok = (tok >= 0) & (tok < V)
        bad = np.bincount(seq_of[~ok], minlength=N)
        tok, seq_of = tok[ok], seq_of[ok]                        # relaxed: bad ids are simply dropped
        n_coef = np.bincount(seq_of, weights=self._len[tok], minlength=N).astype(np.int64)
        valid = (bad == 0) & (n_coef == S)
        # expand every token into its coefficients: c-th coefficient of the whole stream
        lens = self._len[tok]
        offs = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        coef_val = self._flat[np.repeat(self._start[tok], lens) + offs]
        coef_seq = np.repeat(seq_of, lens)
        first = np.r_[0, np.cumsum(n_coef)[:-1]]                 # start of each sequence's coefficients
        coef_pos = np.arange(len(coef_val)) - first[coef_seq]
        keep = (coef_pos < S) & (valid[coef_seq] | relaxed)      # relaxed: truncate long, zero-pad short
        coef = np.zeros((N, S))
        coef[coef_seq[keep], coef_pos[keep]] = coef_val[keep]
        x = np.einsum("kt,nkd->ntd", dct_matrix(T), coef.reshape(-1, T, D) / self.scale)
        actions = self.denormalize(x)
        g = self.gripper_dim
        if g >= 0: actions[..., g] = np.where(actions[..., g] > self._centre[g], self.norm_high[g], self.norm_low[g])
        return actions.astype(np.float32), valid

    def to_dict(self) -> dict:
        return dict(format=self.FORMAT, time_horizon=self.time_horizon, action_dim=self.action_dim,
                    scale=self.scale, gripper_dim=self.gripper_dim, min_token=self.min_token,
                    n_symbols=self.n_symbols, vocab_size=self.vocab_size,
                    norm_low=self.norm_low.tolist(), norm_high=self.norm_high.tolist(),
                    merges=[list(m) for m in self.merges], vocab=self.vocab)

    def save(self, path):
        d = self.to_dict()                    # one key per line; one merge / vocab entry per line
        lines = [f'  "{k}": [\n    ' + ",\n    ".join(json.dumps(e) for e in v) + "\n  ]"
                 if k in ("merges", "vocab") else f'  "{k}": {json.dumps(v)}' for k, v in d.items()]
        write_text(path, "{\n" + ",\n".join(lines) + "\n}\n")

    @classmethod
    def load(cls, path):
        try:
            with open(path) as f: d = json.load(f)
            if d["format"] != cls.FORMAT: raise ValueError(f"format {d['format']!r}, expected {cls.FORMAT!r}")
            if any(len(m) != 2 or not all(type(x) is int and 0 <= x < d["n_symbols"] + k for x in m)
                   for k, m in enumerate(d["merges"])):
                raise ValueError("a merge is not a pair of ids defined before it")
            tok = cls(**{k: d[k] for k in ("time_horizon", "action_dim", "scale", "min_token", "n_symbols",
                                              "merges", "norm_low", "norm_high", "gripper_dim")})
            if tok.norm_low.shape != (tok.action_dim,) or tok.norm_high.shape != (tok.action_dim,):
                raise ValueError("norm_low/norm_high must have action_dim entries")
            if d["vocab"] != tok.vocab or d["vocab_size"] != tok.vocab_size:
                raise ValueError("vocab or vocab_size disagree with the merges")
        except (OSError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: not a valid fast_tokenizer.json ({type(e).__name__}: {e})") from None
        return tok


# ----------------------------------------------------------------------------- helpers

def _check_chunks(chunks, T=None, D=None) -> np.ndarray:
    x = np.asarray(chunks, np.float64)
    if x.ndim != 3 or len(x) == 0 or (T is not None and x.shape[1:] != (T, D)):
        raise ValueError(f"expected chunks [N>0, {T or 'T'}, {D or 'D'}], got shape {x.shape}")
    if not np.isfinite(x).all(): raise ValueError("chunks contain NaN or inf")
    return x


def _flatten_ids(ids):
    """Any list of id lists -> (ids int64 [total], tokens per sequence int64 [N]). An id that is not
    an int in 0..2**62 (huge, float, junk) becomes -1, which decode treats as out of vocabulary."""
    def seq(s):
        if isinstance(s, (str, bytes)): return [-1]
        try: return list(s)
        except TypeError: return [-1]        # an int where a list belongs: one bad id
    def one(t):
        try: v = operator.index(t)
        except TypeError: return -1
        return v if 0 <= v < 2**62 else -1
    try: seqs = [seq(s) for s in ids]
    except TypeError: seqs = []              # ids itself is not iterable
    n_tok = np.array([len(s) for s in seqs], np.int64)
    flat = [t for s in seqs for t in s]
    try:                                      # fast path: plain ints
        arr = np.array(flat)
        if arr.ndim == 1 and arr.dtype.kind in "iu": return arr.astype(np.int64), n_tok
    except (ValueError, TypeError, OverflowError):
        pass
    return np.array([one(t) for t in flat], np.int64), n_tok


def synthetic_chunks(n: int, horizon: int, seed: int = 0, D: int = 7) -> np.ndarray:
    """[n, horizon, D] float32 smooth LIBERO-like actions: sums of low-frequency sinusoids clipped to
    [-1, 1] per arm dim, a -1/+1 gripper that switches once in a while; windows of longer episodes."""
    rng = np.random.default_rng(seed)
    ep_len = 200                              # 10 s at 20 Hz
    n_ep = -(-n // (ep_len - horizon + 1))
    t = np.arange(ep_len)[None, :, None] / 20.0
    f = rng.uniform(0.05, 1.0, (n_ep, 1, D - 1, 3))              # Hz; 3 sinusoids per dim
    amp, ph = rng.uniform(0, 0.6, f.shape), rng.uniform(0, 2 * np.pi, f.shape)
    arm = np.clip((amp * np.sin(2 * np.pi * f * t[..., None] + ph)).sum(-1), -1, 1)
    grip = np.where((t[..., 0] + rng.uniform(0, 10, (n_ep, 1))) % 10 < 5, -1.0, 1.0)[..., None]
    ep = np.concatenate([arm, grip], -1)                         # [n_ep, ep_len, D]
    win = np.lib.stride_tricks.sliding_window_view(ep, horizon, axis=1)   # [n_ep, W, D, T]
    return win.transpose(0, 1, 3, 2).reshape(-1, horizon, D)[:n].astype(np.float32)


def evaluate(tok: FastTokenizer, chunks, relaxed=False) -> dict:
    """Token counts, compression and reconstruction error of `chunks` [N, T, D] through tok."""
    T, D = tok.time_horizon, tok.action_dim
    coef = tok.coefficients(chunks)
    t0 = time.perf_counter(); ids = tok.encode(chunks); t1 = time.perf_counter()
    actions, valid = tok.decode(ids); t2 = time.perf_counter()
    n = np.array([len(s) for s in ids])
    err_raw, err_norm = actions - chunks, tok.normalize(actions) - tok.normalize(chunks)
    cut = [s[:-1] for s in ids]               # robustness probe: every sequence loses its last token
    cut_actions, cut_valid = tok.decode(cut, relaxed=relaxed)
    return dict(chunks=len(chunks), tokens_mean=float(n.mean()), tokens_max=int(n.max()),
                naive_tokens=T * D, compression=float(T * D / n.mean()),
                err_max_norm=float(np.abs(err_norm).max()), err_rms_norm=float(np.sqrt((err_norm ** 2).mean())),
                err_max_raw=float(np.abs(err_raw).max()), err_rms_raw=float(np.sqrt((err_raw ** 2).mean())),
                clip_frac=float(((coef < tok.min_token) | (coef >= tok.min_token + tok.n_symbols)).mean()),
                valid_frac=float(valid.mean()), tokens_used=len(set(t for s in ids for t in s)),
                encode_chunks_per_s=len(chunks) / (t1 - t0), decode_chunks_per_s=len(chunks) / (t2 - t1),
                truncated_valid_frac=float(cut_valid.mean()),
                truncated_err_rms_norm=float(np.sqrt(((tok.normalize(cut_actions) - tok.normalize(chunks)) ** 2).mean())))


def load_chunks(cfg: Config):
    """(train, val) chunks [N, T, 7] from the demos (or synthetic), as float32 raw units."""
    if cfg.synthetic > 0:
        return synthetic_chunks(cfg.synthetic, cfg.horizon, cfg.seed), synthetic_chunks(max(cfg.synthetic // 10, 1), cfg.horizon, cfg.seed + 1)
    try:
        from data.demos import open_dataset
    except ImportError as e:
        raise SystemExit(f"fast_tokenizer.py: cannot import data.demos ({e}); run from the repo root or use --synthetic N")
    ds = open_dataset(cfg.data, cfg.data_format, cfg.drop_noops)   # bad data: DatasetError, reported in one line
    try:
        return ds.action_chunks(horizon=cfg.horizon, split="train"), ds.action_chunks(horizon=cfg.horizon, split="val")
    except ValueError as e:                   # e.g. a split without episodes
        raise SystemExit(f"fast_tokenizer.py: {cfg.data}: cannot make train and val chunks ({e})")


@exits_on_bad_files("fast_tokenizer.py")
def main(cfg: Config):
    train, val = load_chunks(cfg)
    for name, x in (("train", train), ("val", val)):
        if not (isinstance(x, np.ndarray) and x.ndim == 3 and x.shape[1] == cfg.horizon and x.shape[2] > cfg.gripper_dim and len(x)):
            raise SystemExit(f"fast_tokenizer.py: expected {name} chunks [N>0, {cfg.horizon}, D], got {getattr(x, 'shape', type(x))}")
    t0 = time.perf_counter()
    try:
        tok = FastTokenizer.fit(train, cfg.vocab_size, cfg.scale, cfg.margin, cfg.gripper_dim)
    except ValueError as e:
        raise SystemExit(f"fast_tokenizer.py: {e}")
    fit_s = time.perf_counter() - t0
    m = dict(config=vars(cfg), fit_s=fit_s, train_chunks=len(train), vocab_size=tok.vocab_size,
             alphabet=[tok.min_token, tok.min_token + tok.n_symbols - 1], val=evaluate(tok, val, cfg.relaxed))
    tok.save(os.path.join(cfg.out, "fast_tokenizer.json"))
    write_json(os.path.join(cfg.out, "metrics.json"), m, indent=2)
    v = m["val"]
    print(f"fit {fit_s:.2f}s on {len(train)} chunks [{cfg.horizon}, {train.shape[2]}]; vocab {tok.vocab_size} (alphabet "
          f"{tok.min_token}..{tok.min_token + tok.n_symbols - 1}); on {v['chunks']} val chunks, {v['tokens_used']} ids used\n"
          f"tokens/chunk mean {v['tokens_mean']:.2f} max {v['tokens_max']} vs naive {v['naive_tokens']}: compression "
          f"{v['compression']:.2f}x; clipped coefficients {v['clip_frac']:.1e}; valid {v['valid_frac']:.3f}\n"
          f"reconstruction max / rms: normalised {v['err_max_norm']:.4f} / {v['err_rms_norm']:.4f}, raw "
          f"{v['err_max_raw']:.4f} / {v['err_rms_raw']:.4f}\nencode {v['encode_chunks_per_s']:.0f} chunks/s, decode "
          f"{v['decode_chunks_per_s']:.0f} chunks/s; last token dropped, {'relaxed' if cfg.relaxed else 'strict'} "
          f"decode: valid {v['truncated_valid_frac']:.3f}, rms (normalised) {v['truncated_err_rms_norm']:.4f}")
    print(f"wrote {cfg.out}/fast_tokenizer.json and {cfg.out}/metrics.json")


if __name__ == "__main__":
    main(parse_config())
