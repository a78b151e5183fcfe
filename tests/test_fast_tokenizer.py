"""Tests for fast_tokenizer.py. All data is generated here; no demos, no scipy, no network."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import fast_tokenizer as ft  # noqa: E402


@pytest.fixture(scope="module")
def data():
    return ft.synthetic_chunks(3000, 10, seed=0), ft.synthetic_chunks(500, 10, seed=1)


@pytest.fixture(scope="module")
def tok(data):
    return ft.FastTokenizer.fit(data[0], vocab_size=512)


# ----------------------------------------------------------------------------- naive references

def naive_fit(seqs, n_symbols, vocab_size, min_count=2):
    """Textbook BPE: full recount per merge, max count, ties to the lowest (a, b), left to right."""
    words, merges = [list(s) for s in seqs], []
    for c in range(n_symbols, vocab_size):
        cnt = {}
        for w in words:
            for pair in zip(w, w[1:]): cnt[pair] = cnt.get(pair, 0) + 1
        if not cnt: break
        (a, b), n = max(cnt.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))
        if n < min_count: break
        merges.append((a, b))
        words = [naive_apply(w, a, b, c) for w in words]
    return merges


def naive_apply(w, a, b, c):
    out, t = [], 0
    while t < len(w):
        if t + 1 < len(w) and (w[t], w[t + 1]) == (a, b): out.append(c); t += 2
        else: out.append(w[t]); t += 1
    return out


def naive_encode(seq, merges, n_symbols):
    """Standard BPE encoding: repeatedly merge the lowest-rank pair present (leftmost on ties)."""
    rank, w = {m: k for k, m in enumerate(merges)}, list(seq)
    while True:
        found = [(rank[p], t) for t, p in enumerate(zip(w, w[1:])) if p in rank]
        if not found: return w
        r, t = min(found)
        w[t:t + 2] = [n_symbols + r]


def expand(ids, merges, n_symbols):
    vocab = [[v] for v in range(n_symbols)]
    for a, b in merges: vocab.append(vocab[a] + vocab[b])
    return [x for i in ids for x in vocab[i]]


def dct_via_fft(x):
    """Orthonormal DCT-II along axis 0 through the FFT of the even extension (Makhoul), independent
    of dct_matrix: X_k = Re(exp(-i pi k / 2T) FFT([x, x reversed])_k) / 2, then ortho scaling."""
    T = len(x)
    Y = np.fft.fft(np.concatenate([x, x[::-1]]), axis=0)[:T]
    k = np.arange(T).reshape(-1, *([1] * (x.ndim - 1)))
    X = np.real(np.exp(-1j * np.pi * k / (2 * T)) * Y) / 2
    return X * np.where(k == 0, np.sqrt(1 / T), np.sqrt(2 / T))


# ----------------------------------------------------------------------------- DCT

@pytest.mark.parametrize("T", [1, 2, 5, 10, 16, 33])
def test_dct_orthonormal_and_exact_inverse(T):
    C = ft.dct_matrix(T)
    np.testing.assert_allclose(C @ C.T, np.eye(T), atol=1e-12)
    x = np.random.default_rng(T).normal(size=(T, 3))
    np.testing.assert_allclose(C @ x, dct_via_fft(x), atol=1e-12)
    np.testing.assert_allclose(C.T @ (C @ x), x, atol=1e-12)
    assert not C.flags.writeable


def test_flatten_is_frequency_major_dims_interleaved(tok, data):
    x = data[1][:4]
    coef = np.rint(np.einsum("kt,ntd->nkd", ft.dct_matrix(10), tok.normalize(x)) * tok.scale)  # [N, k, d]
    flat = tok.coefficients(x)
    assert flat.shape == (4, 70)
    np.testing.assert_array_equal(flat[:, :7], coef[:, 0, :])   # all dims' frequency 0 first
    np.testing.assert_array_equal(flat[:, 7 * 3 + 2], coef[:, 3, 2])


# ----------------------------------------------------------------------------- round trip and bound

def test_round_trip_error_bounds(data):
    train, val = data
    tok = ft.FastTokenizer.fit(train, vocab_size=512, gripper_dim=-1)   # no snapping: pure codec
    ids = tok.encode(val)
    assert all(max(s) < tok.vocab_size and min(s) >= 0 for s in ids)
    assert (tok.coefficients(val) >= tok.min_token).all()                # nothing clipped here
    assert (tok.coefficients(val) < tok.min_token + tok.n_symbols).all()
    actions, valid = tok.decode(ids)
    assert valid.all() and actions.shape == val.shape and actions.dtype == np.float32
    C = ft.dct_matrix(10)
    # DCT space: each coefficient is off by its rounding error only, |round(s c) / s - c| <= 0.5 / s
    err_coef = C @ (tok.normalize(actions) - tok.normalize(val))          # [N, T, D] via broadcasting
    assert np.abs(err_coef).max() <= 0.5 / tok.scale + 1e-5               # 1e-5: float32 output
    # action space: e_t = sum_k C[k, t] delta_k, |delta_k| <= 0.5/s  =>  |e_t| <= 0.5/s * sum_k |C[k, t]|
    # (<= 0.5/s * sqrt(T) by Cauchy-Schwarz), times the half-range of the dimension in raw units
    bound_norm = 0.5 / tok.scale * np.abs(C).sum(0).max()
    assert bound_norm <= 0.5 / tok.scale * np.sqrt(10) + 1e-12
    bound_raw = bound_norm * (tok.norm_high - tok.norm_low) / 2              # [D]
    assert (np.abs(actions - val) <= bound_raw + 1e-5).all()
    assert np.abs(actions - val).max() > 0.2 * bound_raw.min()              # the bound is not vacuous


def test_gripper_is_snapped_to_binary(tok, data):
    actions, valid = tok.decode(tok.encode(data[1]))
    assert set(np.unique(actions[..., 6]).tolist()) <= {-1.0, 1.0}
    np.testing.assert_array_equal(actions[..., 6], data[1][..., 6])


def test_compression_on_smooth_signals(tok, data):
    n = np.array([len(s) for s in tok.encode(data[1])])
    assert n.mean() < 70 / 3                  # naive binning would need T*D = 70 tokens


def test_out_of_range_coefficients_are_clipped(tok, data):
    x = data[1][:50] * 40                     # far outside the fitted range
    coef = tok.coefficients(x)
    assert (coef > tok.min_token + tok.n_symbols - 1).any()
    actions, valid = tok.decode(tok.encode(x))
    assert valid.all() and np.isfinite(actions).all()
    biggest = max(-tok.min_token, tok.min_token + tok.n_symbols - 1) / tok.scale   # largest |coefficient|
    assert (np.abs(tok.normalize(actions)) <= biggest * np.abs(ft.dct_matrix(10)).sum(0).max() + 1e-5).all()


# ----------------------------------------------------------------------------- BPE

def test_merges_on_hand_worked_example():
    seqs = np.array([[0, 0, 0, 0, 1], [0, 0, 1, 2, 1]])
    # counts (0,0) 3+1, (0,1) 2, (1,2) 1, (2,1) 1      -> 3 = [0 0];   now [3 3 1], [3 1 2 1]
    # counts (3,3) 1, (3,1) 2, (1,2) 1, (2,1) 1        -> 4 = [0 0 1]; now [3 4], [4 2 1]
    # counts (3,4) 1, (4,2) 1, (2,1) 1: below min count 2 -> stop
    merges = ft.bpe_fit(seqs, 3, 10)
    assert merges == [(0, 0), (3, 1)]
    # with min count 1 the three-way tie goes to the lowest pair, (2,1) -> 5
    assert ft.bpe_fit(seqs, 3, 6, min_count=1) == [(0, 0), (3, 1), (2, 1)]
    rank = np.full(5 * 5, -1, np.int32)
    rank[0 * 5 + 0], rank[3 * 5 + 1] = 0, 1
    # [0 0 0 0 1] -> [3 3 1] -> [3 4];  [0 0 0 1 2] -> [3 0 1 2] (no (3,1) left)
    assert ft.bpe_encode(np.array([[0, 0, 0, 0, 1], [0, 0, 0, 1, 2]]), merges, 3, rank) == [[3, 4], [3, 0, 1, 2]]


def test_fit_equals_naive_recount_bpe():
    for seed in range(30):
        rng = np.random.default_rng(seed)
        n_sym = int(rng.integers(1, 6))
        seqs = rng.integers(0, n_sym, (int(rng.integers(1, 30)), int(rng.integers(2, 15))))
        if seed % 3 == 0: seqs[:, ::2] = 0     # long runs of one symbol: overlapping pairs
        assert ft.bpe_fit(seqs, n_sym, 50) == naive_fit(seqs, n_sym, 50), seed


def test_rank_order_encoding_equals_naive_encoding():
    rng = np.random.default_rng(0)
    for trial in range(40):
        n_sym = int(rng.integers(2, 6))
        if trial % 2:                          # merges learned on other data
            merges = ft.bpe_fit(rng.integers(0, n_sym, (30, 12)), n_sym, 40)
        else:                                  # any valid random merge table, no repeated pair
            merges = []
            while len(merges) < 30:
                m = tuple(int(v) for v in rng.integers(0, n_sym + len(merges), 2))
                if m not in merges: merges.append(m)
        V = n_sym + len(merges)
        rank = np.full(V * V, -1, np.int32)
        for k, (a, b) in enumerate(merges): rank[a * V + b] = k
        seqs = rng.integers(0, n_sym, (20, int(rng.integers(2, 20))))
        if trial % 4 == 0: seqs[:, 1::2] = seqs[:, ::2][:, :seqs[:, 1::2].shape[1]]
        got = ft.bpe_encode(seqs, merges, n_sym, rank)
        assert got == [naive_encode(s, merges, n_sym) for s in seqs.tolist()], trial
        assert [expand(g, merges, n_sym) for g in got] == seqs.tolist()


def test_bpe_round_trip_is_exact_on_integers():
    rng = np.random.default_rng(1)
    seqs = np.cumsum(rng.integers(-1, 2, (400, 30)), 1) % 9   # random walks: many repeats
    merges = ft.bpe_fit(seqs, 9, 200)
    assert len(merges) == 200 - 9
    V = 200
    rank = np.full(V * V, -1, np.int32)
    for k, (a, b) in enumerate(merges): rank[a * V + b] = k
    ids = ft.bpe_encode(seqs, merges, 9, rank)
    assert [expand(s, merges, 9) for s in ids] == seqs.tolist()
    assert np.mean([len(s) for s in ids]) < 15


# ----------------------------------------------------------------------------- decode robustness

def test_decode_never_raises(tok, data):
    rng = np.random.default_rng(2)
    ids = tok.encode(data[1])
    V = tok.vocab_size
    centre = tok.denormalize(np.zeros(7)).astype(np.float32)
    centre[6] = tok.norm_low[6]
    cases = []
    for k in range(3000):
        s = list(ids[k % len(ids)])
        kind = k % 6
        if kind == 0: s = rng.integers(-5, V + 5, rng.integers(0, 60)).tolist()      # random ids
        if kind == 1: s = s[:rng.integers(0, len(s))]                              # truncated
        if kind == 2: s = s + rng.integers(0, V, rng.integers(1, 5)).tolist()      # overlong
        if kind == 3: s.insert(int(rng.integers(0, len(s) + 1)), int(rng.choice([-1, V, 2**70, -2**70])))
        if kind == 4: s = [0] * int(rng.integers(0, 200))                          # runs of one symbol
        cases.append((kind, s))
    junk = [[], [[]], [[1.5, 2]], [None], [["a"]], [[np.int64(3)] * 3], [3], "abc", None, [[True] * 70]]
    for relaxed in (False, True):
        actions, valid = tok.decode([s for _, s in cases], relaxed=relaxed)
        assert actions.shape == (len(cases), 10, 7) and valid.shape == (len(cases),)
        assert np.isfinite(actions).all()
        for (kind, s), a, v in zip(cases, actions, valid):
            if kind in (1, 2, 3): assert not v
            if kind == 5: assert v
            if not v and not relaxed: np.testing.assert_allclose(a, np.broadcast_to(centre, (10, 7)), atol=1e-6)
        for j in junk:
            a, v = tok.decode(j, relaxed=relaxed)
            assert np.isfinite(a).all() and a.shape == (len(v), 10, 7)
    assert tok.decode([])[0].shape == (0, 10, 7)
    assert tok.decode([[np.int64(3)] * 70])[1].all()              # 70 numpy ints, each one coefficient
    assert not tok.decode([[1.5] * 70])[1].any()                  # floats are not ids


def test_relaxed_decoding_pads_and_truncates(tok, data):
    x = data[1][:20]
    ids = tok.encode(x)
    exact, _ = tok.decode(ids)
    longer = [s + [0, 5, 7] for s in ids]     # truncation drops exactly the appended coefficients
    a, v = tok.decode(longer, relaxed=True)
    assert not v.any()
    np.testing.assert_array_equal(a, exact)
    shorter = [s[:1] for s in ids]            # zero-padding keeps what is there: the first token's coefs
    a, v = tok.decode(shorter, relaxed=True)
    assert not v.any()
    coef = np.zeros((20, 70))
    for n, s in enumerate(shorter): coef[n, :len(tok.vocab[s[0]])] = tok.vocab[s[0]]
    want = tok.denormalize(np.einsum("kt,nkd->ntd", ft.dct_matrix(10), coef.reshape(20, 10, 7) / tok.scale))
    np.testing.assert_allclose(a[..., :6], want[..., :6], atol=1e-5)
    strict, v = tok.decode(shorter)
    assert not np.allclose(strict, a)


# ----------------------------------------------------------------------------- save / load / determinism

def test_save_load_identity(tok, data, tmp_path):
    path = tmp_path / "fast_tokenizer.json"
    tok.save(path)
    d = json.loads(path.read_text())
    assert d["vocab_size"] == tok.vocab_size == len(d["vocab"]) and d["scale"] == 10.0
    assert (d["time_horizon"], d["action_dim"]) == (10, 7)
    assert len(path.read_text().splitlines()) > tok.vocab_size   # one vocab entry per line
    tok2 = ft.FastTokenizer.load(path)
    assert tok2.to_dict() == tok.to_dict()
    assert tok2.encode(data[1]) == tok.encode(data[1])
    ids = tok.encode(data[1])
    np.testing.assert_array_equal(tok2.decode(ids)[0], tok.decode(ids)[0])
    d["merges"][5] = [0, tok.vocab_size]      # references an id that does not exist yet
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="merge"): ft.FastTokenizer.load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="fast_tokenizer.json"): ft.FastTokenizer.load(path)


def test_determinism_and_no_hidden_state(data):
    a = ft.FastTokenizer.fit(data[0], vocab_size=300)
    b = ft.FastTokenizer.fit(data[0][::-1].copy(), vocab_size=300)   # order of chunks does not matter
    assert a.merges == b.merges
    ids = a.encode(data[1])
    assert ids == a.encode(data[1]) == b.encode(data[1])
    first = a.decode(ids[:10])[0]
    a.decode([[1, 2, 3]], relaxed=True)       # an unrelated call in between changes nothing
    a.decode(ids[10:50])
    np.testing.assert_array_equal(a.decode(ids[:10])[0], first)


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError): ft.FastTokenizer.fit(np.zeros((10, 7)))
    with pytest.raises(ValueError): ft.FastTokenizer.fit(np.full((4, 10, 7), np.nan))
    with pytest.raises(ValueError, match="vocab_size"): ft.FastTokenizer.fit(ft.synthetic_chunks(100, 10) * 50, vocab_size=64)


# ----------------------------------------------------------------------------- CLI

def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "fast_tokenizer.py"), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_synthetic(tmp_path):
    out = tmp_path / "fast"
    r = run_cli("--synthetic", "3000", "--vocab-size", "256", "--out", str(out))
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["val"]["compression"] > 2 and m["val"]["valid_frac"] == 1.0 and m["vocab_size"] == 256
    assert ft.FastTokenizer.load(out / "fast_tokenizer.json").vocab_size == 256
    assert "compression" in r.stdout


def test_cli_bad_data_path(tmp_path):
    out = tmp_path / "fast"
    r = run_cli("--data", str(tmp_path / "missing"), "--out", str(out))
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()
    assert run_cli("--help").returncode == 0


def test_benchmark_reference_runs_on_small_data(tmp_path):
    pytest.importorskip("scipy")              # only installed for the benchmark (requirements-bench.txt)
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import bench_fast
    cfg = bench_fast.parse_config(["--synthetic", "--heldout", "300", "--repeats", "1", "--vocab-size", "256"])
    res = bench_fast.bench_one(cfg, 10)
    ours, ref = res["rows"]["ours"], res["rows"]["ref"]
    # same DCT and rounding; the reference also zeroes chunks whose coefficients left its fitted range
    assert ours["valid"] == 1.0 and ours["arm_rms"] <= ref["arm_rms"] * (1 + 1e-3)
    assert ours["tokens"] < ref["tokens"]
    assert "| 10 | ours |" in bench_fast.report(cfg, [res])
