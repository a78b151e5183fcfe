"""
bench/bench_fast.py -- fast_tokenizer.py against a reference-style FAST implementation.

The reference is the published algorithm written the way processing_action_tokenizer.py
(huggingface.co/physical-intelligence/fast, class UniversalActionProcessor) writes it: scipy's
orthonormal DCT, np.around, one chr() per coefficient, a ByteLevelBPETokenizer whose inner tokenizer
is trained by a BpeTrainer (min_frequency 2, the coefficient range as initial alphabet, no special
tokens), wrapped in transformers' PreTrainedTokenizerFast and called once per chunk; decode is one
tokenizer.decode per sequence, ord() back, and all-zero coefficients when the shape is wrong.
Both tokenizers see the same quantile normalisation (fast_tokenizer's, fitted on the fit portion);
the reference gets normalised chunks, ours raw ones (so our timings include normalising).
A third row, "ref, batched", calls the same Rust tokenizer through encode_batch / decode_batch and
vectorises the DCT: a stronger baseline than the reference code, shown for context only.

Data: the mini-LIBERO demos (episodes shuffled with --seed, then held-out episodes until 20 000
chunks, the rest to fit on, so no step is in both), or --synthetic. Writes --out (markdown table
plus machine description). Needs requirements-bench.txt (scipy; tokenizers and transformers come
with requirements.txt):

    pip install -r requirements-bench.txt
    python bench/bench_fast.py                       # demos in out/demos, T=16 and T=10: ~1 min
    python bench/bench_fast.py --synthetic --out /tmp/fast.md
"""
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fast_tokenizer as ft  # noqa: E402
from config import arg, parse_config as parse_flags  # noqa: E402


@dataclass
class Config:
    data: str = arg("out/demos", "dataset (mini-LIBERO demos, LIBERO HDF5 or LeRobot; data.demos.open_dataset)")
    out: str = arg("bench/results/fast.md", "markdown file for the results table")
    horizons: str = arg("16,10", "comma-separated chunk lengths T")
    heldout: int = arg(20000, "held-out chunks to encode/decode")
    vocab_size: int = arg(1024, "vocabulary size of both tokenizers")
    scale: float = arg(10.0, "DCT scale of both tokenizers")
    repeats: int = arg(3, "timings are the best of this many runs")
    synthetic: bool = arg(False, "use fast_tokenizer.synthetic_chunks instead of the demos")
    seed: int = arg(0, "seed of the episode shuffle / synthetic data")


def parse_config(argv=None) -> Config:
    return parse_flags(Config, argv, __doc__)


class ReferenceFAST:
    """UniversalActionProcessor's fit / __call__ / decode, minus the ProcessorMixin plumbing."""

    def __init__(self, chunks_norm, scale, vocab_size):
        from scipy.fft import dct
        from tokenizers import ByteLevelBPETokenizer
        from tokenizers.trainers import BpeTrainer
        from transformers import PreTrainedTokenizerFast
        self.scale, self.T, self.D = scale, chunks_norm.shape[1], chunks_norm.shape[2]
        dct_tokens = [dct(a, axis=0, norm="ortho").flatten() for a in chunks_norm]
        q = np.around(np.concatenate(dct_tokens) * scale)
        self.min_token, max_token = int(q.min()), int(q.max())
        assert max_token - self.min_token <= vocab_size
        strings = ("".join(map(chr, (np.around(t * scale) - self.min_token).astype(int))) for t in dct_tokens)
        bpe = ByteLevelBPETokenizer()
        trainer = BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                             initial_alphabet=[chr(i) for i in range(max_token - self.min_token + 1)],
                             max_token_length=10000)
        bpe._tokenizer.train_from_iterator(strings, trainer=trainer)
        self.rust = bpe._tokenizer
        self.hf = PreTrainedTokenizerFast(tokenizer_object=bpe, clean_up_tokenization_spaces=False)

    def _strings(self, chunks_norm):
        from scipy.fft import dct
        coef = np.around(dct(chunks_norm, axis=1, norm="ortho") * self.scale)
        return ["".join(map(chr, np.maximum(e.flatten() - self.min_token, 0).astype(int))) for e in coef]

    def encode(self, chunks_norm):             # as the reference: one tokenizer call per chunk
        return [self.hf(s)["input_ids"] for s in self._strings(chunks_norm)]

    def decode(self, tokens):                  # as the reference: one decode per sequence
        from scipy.fft import idct
        out = []
        for t in tokens:
            try:
                coef = np.array(list(map(ord, self.hf.decode(t)))) + self.min_token
                coef = coef.reshape(-1, self.D)
                assert coef.shape == (self.T, self.D)
            except Exception:                  # the reference also prints the error; we stay quiet
                coef = np.zeros((self.T, self.D))
            out.append(idct(coef / self.scale, axis=0, norm="ortho"))
        return np.stack(out)

    def encode_batched(self, chunks_norm):     # same Rust tokenizer, batched calls (context only)
        return [e.ids for e in self.rust.encode_batch(self._strings(chunks_norm))]

    def decode_batched(self, tokens):
        from scipy.fft import idct
        S = self.T * self.D
        coef = np.zeros((len(tokens), S))
        for n, s in enumerate(self.rust.decode_batch(tokens)):
            if len(s) == S: coef[n] = np.array(list(map(ord, s))) + self.min_token
        return idct(coef.reshape(-1, self.T, self.D) / self.scale, axis=1, norm="ortho")


def split_chunks(cfg, T):
    """(fit, held-out) raw chunks [N, T, 7]: whole episodes go to one side or the other."""
    if cfg.synthetic:
        return ft.synthetic_chunks(cfg.heldout, T, cfg.seed), ft.synthetic_chunks(cfg.heldout, T, cfg.seed + 1)
    from data.demos import chunk_episode, open_dataset
    ds = open_dataset(cfg.data)
    order = np.random.default_rng(cfg.seed).permutation(len(ds))
    held, fit, n_held = [], [], 0
    for i in order:
        c = chunk_episode(ds.actions(int(i)), T)
        if n_held < cfg.heldout: held.append(c); n_held += len(c)
        else: fit.append(c)
    if n_held < cfg.heldout or not fit:
        raise SystemExit(f"bench_fast.py: {cfg.data} has too few steps for {cfg.heldout} held-out chunks plus a fit set")
    return np.concatenate(fit).astype(np.float32), np.concatenate(held)[:cfg.heldout].astype(np.float32)


def best_time(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter(); out = fn(); best = min(best, time.perf_counter() - t0)
    return best, out


def errors(tok, decoded_raw, held):
    e_norm = tok.normalize(decoded_raw) - tok.normalize(held)
    e_raw = decoded_raw - held
    return dict(err_max=np.abs(e_norm).max(), err_rms=np.sqrt((e_norm ** 2).mean()),
                arm_rms=np.sqrt((e_norm[..., :6] ** 2).mean()), raw_rms=np.sqrt((e_raw ** 2).mean()))


def bench_one(cfg, T):
    fit, held = split_chunks(cfg, T)
    N = len(held)
    r = cfg.repeats
    fit_ours, tok = best_time(lambda: ft.FastTokenizer.fit(fit, cfg.vocab_size, cfg.scale), r)
    fit_norm, held_norm = tok.normalize(fit), tok.normalize(held)
    fit_ref, ref = best_time(lambda: ReferenceFAST(fit_norm, cfg.scale, cfg.vocab_size), r)
    rows = {}
    t_enc, ids = best_time(lambda: tok.encode(held), r)
    t_dec, (dec, valid) = best_time(lambda: tok.decode(ids), r)
    rows["ours"] = dict(tokens=np.mean([len(s) for s in ids]), tokens_max=max(len(s) for s in ids), fit=fit_ours,
                        enc=N / t_enc, dec=N / t_dec, valid=valid.mean(), **errors(tok, dec, held))
    for name, enc, dec_fn in (("ref", ref.encode, ref.decode), ("ref, batched", ref.encode_batched, ref.decode_batched)):
        t_enc, rids = best_time(lambda: enc(held_norm), r)
        t_dec, rdec = best_time(lambda: dec_fn(rids), r)
        rows[name] = dict(tokens=np.mean([len(s) for s in rids]), tokens_max=max(len(s) for s in rids),
                          fit=fit_ref, enc=N / t_enc, dec=N / t_dec, valid=(rdec != 0).any(axis=(1, 2)).mean(),
                          **errors(tok, tok.denormalize(rdec), held))
    clip = tok.coefficients(held)
    clip = ((clip < tok.min_token) | (clip >= tok.min_token + tok.n_symbols)).mean()
    return dict(T=T, n_fit=len(fit), n_held=N, rows=rows, clip=clip, vocab=tok.vocab_size,
                alphabet=(tok.min_token, tok.min_token + tok.n_symbols - 1), ref_alphabet=ref.min_token)


def machine():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import scipy, tokenizers, transformers
    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}; Python "
            f"{platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, tokenizers "
            f"{tokenizers.__version__}, transformers {transformers.__version__}")


def report(cfg, results):
    src = (f"synthetic chunks (fast_tokenizer.synthetic_chunks), fit and held-out sets from seeds {cfg.seed} and "
           f"{cfg.seed + 1}" if cfg.synthetic else f"mini-LIBERO demos in `{cfg.data}`, all splits; episodes shuffled "
           f"(seed {cfg.seed}), whole episodes held out until {cfg.heldout} chunks (the demos' val split is smaller "
           f"than that), the remaining episodes are the fit set")
    L = ["# FAST tokenizer benchmark\n",
         f"Data: {src}. D=7, vocab {cfg.vocab_size}, scale {cfg.scale:g}; timings best of {cfg.repeats}.\n",
         f"Machine: {machine()}.\n",
         "| T | implementation | fit chunks | tokens/chunk (max) | fit s | encode chunks/s | decode chunks/s | RMS err (norm.) | max err (norm.) | RMS err arm dims | RMS err raw | valid |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        for name, x in res["rows"].items():
            L.append(f"| {res['T']} | {name} | {res['n_fit']} | {x['tokens']:.2f} ({x['tokens_max']}) | {x['fit']:.2f} | "
                     f"{x['enc']:,.0f} | {x['dec']:,.0f} | {x['err_rms']:.4f} | {x['err_max']:.3f} | {x['arm_rms']:.4f} | "
                     f"{x['raw_rms']:.4f} | {x['valid']:.3f} |")
    L += ["", "Goals, as ratios from the same run (ours / ref):", "",
          "| T | tokens ≤ 1 | encode ≥ 1 | decode ≥ 1 | fit ≤ 3 |", "|---|---|---|---|---|"]
    for res in results:
        o, r = res["rows"]["ours"], res["rows"]["ref"]
        L.append(f"| {res['T']} | {o['tokens'] / r['tokens']:.2f} | {o['enc'] / r['enc']:.1f} | {o['dec'] / r['dec']:.1f} | {o['fit'] / r['fit']:.2f} |")
    L += ["", "Notes: \"valid\" for the reference counts chunks that did not decode to all-zero coefficients. Our "
          "decode snaps the gripper (dim 6) to ±1, hence the lower all-dims error; \"arm dims\" (0-5) compares "
          "the codecs alone. Held-out coefficients outside our alphabet (clipped): "
          + ", ".join(f"T={res['T']}: {res['clip']:.1e}" for res in results)
          + ". The reference's BPE runs in Rust (multi-threaded where it can); ours is single-threaded numpy. "
          "Timings on a 2-core machine shared with other work; expect some noise."]
    return "\n".join(L) + "\n"


def main(cfg):
    results = []
    for T in (int(t) for t in cfg.horizons.split(",")):
        res = bench_one(cfg, T)
        results.append(res)
        for name, x in res["rows"].items():
            print(f"T={T:2d} {name:13s} tokens {x['tokens']:6.2f}  fit {x['fit']:5.2f}s  encode {x['enc']:9,.0f}/s  "
                  f"decode {x['dec']:9,.0f}/s  rms {x['err_rms']:.4f}  arm rms {x['arm_rms']:.4f}")
    text = report(cfg, results)
    ft.atomic_write(cfg.out, text)
    print(f"wrote {cfg.out}")


if __name__ == "__main__":
    main(parse_config())
