"""The model and everything every stage shares about it (the role of nanoGPT's model.py).

  * the backbone: a Qwen2.5-VL checkpoint (`load_backbone`), or the tiny one built from scratch (`build_tiny`);
  * the action vocabulary: <ACTION_START>, <ACTION_END> and one token <act_i> per FAST id (new embedding rows
    start at the mean of the old ones, so a new token's logit starts at the average instead of a random extreme),
    and reading an action block back out of generated ids (`parse_actions`, `prefix_ratio`: RoboAlign's r_a);
  * the distributed idiom (`setup_distributed`), checkpoints (`save_checkpoint`, written so the next stage loads
    them with `load_backbone`), resumable state (`save_resume`, `load_resume`, FSDP2's `shard`), the learning-rate
    schedule and AdamW's parameter groups (`configure_optimizers`).

The tiny backbone. The paper starts from Qwen2.5-VL-7B-Instruct, which already sees. A 4 M-parameter model trained
from scratch does not: its merged image tokens become a large near-constant block the language model ignores.
`sft.py --model tiny` therefore builds a small Qwen2.5-VL *plus a vision adapter* (per image: subtract the mean
over its tokens, divide by its RMS, scale by a learnable per-channel gain that starts at the text-embedding scale,
add a learnable position table), and a pretraining run (sft.py's docstring: VQA whose answers only the image
gives, plus FAST generation) stands in for the paper's pretrained MLLM. Its output, `assets/tiny-vl`, ships with
the repository. Plain `transformers` loads it as a Qwen2.5-VL but drops the adapter (a warning names its weights);
`load_backbone` below restores it. Real Qwen checkpoints need no adapter.

Bad files. A checkpoint file that is missing, cut short or foreign raises `CheckpointError` with a one-line
message naming the file and what was expected; each stage's main() is wrapped in config's
`exits_on_bad_files(stage)`, which turns it into `SystemExit("stage.py: message")`: the stage named is the one
running, and no traceback (datasets do the same with data.episodes.DatasetError).
"""
from __future__ import annotations

import math
import os
import re
import shutil

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.fsdp import fully_shard
from transformers import (PreTrainedTokenizerFast, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                          Qwen2_5_VLProcessor)
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from config import BadFileError, read_json, write_json
from fast_tokenizer import FastTokenizer


class CheckpointError(BadFileError):
    """A checkpoint file handed to a stage is missing, cut short or not what was expected; the message names it."""


VOCAB_KEYS = ("n_actions", "act_offset", "action_start", "action_end")      # action_vocab.json


# ----------------------------------------------------------------------------- the backbone
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>", "<|vision_pad|>"]
FORMAT_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]
MARKERS = ["<ACTION_START>", "<ACTION_END>"]
CHAT_TEMPLATE = (   # Qwen's layout without the default system turn (8 tokens per sample saved on the tiny model)
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


class ImageOnlyQwenProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor for images only: needs neither torchvision nor a video processor."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=None,
                         chat_template=chat_template)


class VisionAdapter(nn.Module):
    """Per image [n, d] merged tokens → (x − mean) / rms · gain + pos[:n]. Keeps image tokens at the text
    embeddings' scale and removes the shared component that a from-scratch ViT grows: without it the tiny model's
    merged image tokens form a large near-constant block that its language model learns to ignore."""

    def __init__(self, dim: int, max_tokens: int = 256):
        super().__init__()
        self.gain = nn.Parameter(torch.full((dim,), 0.02))
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(0, keepdim=True)
        x = x / (x.pow(2).mean().sqrt() + 1e-6)
        return x * self.gain + self.pos[: x.shape[0]]


class AdaptedQwenVLModel(Qwen2_5_VLModel):
    def __init__(self, config):
        super().__init__(config)
        self.vision_adapter = VisionAdapter(config.text_config.hidden_size)

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        out = super().get_image_features(pixel_values, image_grid_thw, **kwargs)
        out.pooler_output = tuple(self.vision_adapter(f) for f in out.pooler_output)
        return out


class TinyQwenVL(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL with the vision adapter (the tiny from-scratch backbone only)."""

    def __init__(self, config):
        super().__init__(config)
        self.model = AdaptedQwenVLModel(config)
        self.post_init()


def train_text_tokenizer(sentences, n_actions: int, text_vocab: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE on the world's text + Qwen's specials + format tokens + the action vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=text_vocab, special_tokens=QWEN_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(sentences, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:] + FORMAT_TOKENS})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(tok) -> TinyQwenVL:
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    hd = 64                                                   # head dim; mrope_section must sum to hd / 2
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         rms_norm_eps=1e-6, bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [hd // 8, 3 * hd // 16, 3 * hd // 16]}),
        vision_config=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=4, out_hidden_size=256,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    cfg.vision_adapter = True
    return TinyQwenVL(cfg)


def add_action_vocab(model, tok, n_actions: int) -> dict:
    """Add <ACTION_START>, <ACTION_END>, <act_0..n-1>; new embedding rows = mean of the old rows."""
    old = len(tok)
    tok.add_tokens(MARKERS, special_tokens=True)
    tok.add_tokens([f"<act_{i}>" for i in range(n_actions)], special_tokens=True)
    emb = model.get_input_embeddings().weight
    mean = emb.data[:old].mean(0)
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight[old:] = mean
    return action_vocab(tok, n_actions)


def reset_action_rows(model, vocab: dict) -> None:
    """Re-initialise the <act_i> input (and, if untied, output) rows to the mean of the text rows."""
    lo, hi = vocab["act_offset"], vocab["act_offset"] + vocab["n_actions"]
    with torch.no_grad():
        for w in {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}.values():
            w[lo:hi] = w[:vocab["action_start"]].mean(0)        # text rows: everything before the markers


def action_vocab(tok, n_actions: int) -> dict:
    first = tok.convert_tokens_to_ids("<act_0>")
    ids = tok.convert_tokens_to_ids([f"<act_{i}>" for i in range(n_actions)])
    if first is None or first == tok.unk_token_id or ids != list(range(first, first + n_actions)):
        raise CheckpointError("the checkpoint's tokenizer has no contiguous <act_i> action vocabulary")
    return {"n_actions": n_actions, "act_offset": first, "action_start": tok.convert_tokens_to_ids("<ACTION_START>"),
            "action_end": tok.convert_tokens_to_ids("<ACTION_END>")}


def load_backbone(path: str, trust_remote_code: bool = False, need_actions: bool = True, dtype=torch.float32):
    """(model, processor, fast tokenizer or None, action vocab or None) from a checkpoint dir or hub id. A file
    that is missing, cut short or not what a Qwen2.5-VL checkpoint holds raises CheckpointError naming it."""
    local = os.path.isdir(path)
    if not local and (os.path.sep in path or path.startswith(".")) and not re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    try:
        cfg = Qwen2_5_VLConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        cls = TinyQwenVL if getattr(cfg, "vision_adapter", False) else Qwen2_5_VLForConditionalGeneration
        model, info = cls.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, output_loading_info=True)
        proc = ImageOnlyQwenProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:          # OSError, ValueError, safetensors' and tokenizers' own errors: all one line here
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: cannot load a Qwen2.5-VL checkpoint ({type(e).__name__}: {msg})") from None
    lost = set(info["missing_keys"]) - tied_aliases(model)
    if local and lost:              # a foreign model.safetensors: from_pretrained would start those weights at random
        raise CheckpointError(f"{os.path.join(path, 'model.safetensors')}: not this model's weights "
                              f"({len(lost)} tensors missing, e.g. {sorted(lost)[0]})")
    fast_path, vocab_path = os.path.join(path, "fast_tokenizer.json"), os.path.join(path, "action_vocab.json")
    fast = load_fast_tokenizer(fast_path) if local and os.path.isfile(fast_path) else None
    vocab = None
    if local and os.path.isfile(vocab_path):
        vocab = read_json(vocab_path)
        if not isinstance(vocab, dict) or set(VOCAB_KEYS) - set(vocab):
            raise CheckpointError(f"{vocab_path}: expected a JSON object with keys {', '.join(VOCAB_KEYS)}")
    if need_actions and (vocab is None or fast is None):
        raise CheckpointError(f"{path} has no action vocabulary (action_vocab.json + fast_tokenizer.json); "
                              f"run sft.py on it first")
    # every batch here is left-padded (generation appends on the right); a saved tokenizer does not record it,
    # and a processor called with padding=True on a right-padding one misplaces image tokens (M-RoPE positions)
    proc.tokenizer.padding_side = "left"
    return model, proc, fast, vocab


def load_fast_tokenizer(path: str) -> FastTokenizer:
    """FastTokenizer.load, with a bad file reported as CheckpointError (its message names the file)."""
    try:
        return FastTokenizer.load(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def build_tiny(corpus: list[str], fast: FastTokenizer):
    tok = train_text_tokenizer(corpus, fast.vocab_size)
    ip = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112}, patch_size=14,
                                  temporal_patch_size=2, merge_size=2)
    model = tiny_model(tok)
    vocab = add_action_vocab(model, tok, fast.vocab_size)
    tok.padding_side = "left"
    return model, ImageOnlyQwenProcessor(image_processor=ip, tokenizer=tok, chat_template=CHAT_TEMPLATE), vocab




# ----------------------------------------------------------------------------- actions in token space
def parse_actions(ids: list[int], vocab: dict) -> list[int] | None:
    """FAST ids strictly between the first <ACTION_START> and the next <ACTION_END>; None if absent."""
    s, e = vocab["action_start"], vocab["action_end"]
    if s not in ids:
        return None
    rest = ids[ids.index(s) + 1:]
    if e not in rest:
        return None
    lo, n = vocab["act_offset"], vocab["n_actions"]
    body = rest[: rest.index(e)]
    return [t - lo for t in body] if all(lo <= t < lo + n for t in body) else None


def prefix_ratio(gen: list[int] | None, target: list[int]) -> float:
    """RoboAlign's r_a: longest exact-match prefix / target length (0 if the first token differs or no answer)."""
    if not gen or not target:
        return 0.0
    n = 0
    for a, b in zip(gen, target):
        if a != b:
            break
        n += 1
    return n / len(target)




# ----------------------------------------------------------------------------- distributed set-up
def setup_distributed(seed: int):
    """torchrun sets RANK/WORLD_SIZE; plain `python sft.py` runs one process. nccl on CUDA, gloo on CPU."""
    ddp = "RANK" in os.environ
    rank, world, local = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])) if ddp else (0, 1, 0)
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if ddp:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    torch.manual_seed(seed + rank)
    return ddp, rank, world, device


def end_distributed(ddp: bool) -> None:
    """Every rank leaves the process group once its last collective is done, before rank 0's single-process final
    evaluation and writing: the other ranks then neither idle at a barrier for the evaluation (NCCL's watchdog
    aborts after 10 min) nor tear gloo down while rank 0's process is exiting (that race can hang the teardown)."""
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- checkpoints and resume
def save_checkpoint(model, proc, fast, vocab, out: str, extra: dict, state_dict=None) -> None:
    """Everything the next stage needs, written to out.tmp and renamed: never half-written. state_dict: the
    full weights when `model` itself is sharded (FSDP; see full_state)."""
    tmp = out.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    proc.save_pretrained(tmp)
    if fast is not None:                                            # None: a backbone without actions (vla_train.py)
        fast.save(os.path.join(tmp, "fast_tokenizer.json"))
    for name, obj in (({"action_vocab.json": vocab} if vocab is not None else {}) | extra).items():
        write_json(os.path.join(tmp, name), obj)
    swap_into(tmp, out)


def swap_into(tmp: str, out: str) -> None:
    """Replace the directory `out` by the finished `tmp` in one rename, keeping out/resume (a run's resumable
    state) across the swap: a reader never sees a half-written checkpoint."""
    if os.path.isdir(out):
        keep = os.path.join(out, "resume")
        if os.path.isdir(keep):
            shutil.move(keep, os.path.join(tmp, "resume"))
        shutil.rmtree(out)
    os.replace(tmp, out)


FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def tied_aliases(model) -> set:
    """Names of parameters that are another name's tensor too (the LM head tied to the embedding)."""
    first, alias = {}, set()
    for n, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), n) != n:
            alias.add(n)
    return alias


def full_state(model, opt=None):
    """Unsharded CPU state dicts {name: tensor} of the model, tied weights once (the embedding, not the LM head),
    and of AdamW, keyed by parameter name. Plain and DDP-unwrapped modules: local, any rank may call. FSDP: a
    collective, every rank must call; rank 0 gets them."""
    alias = tied_aliases(model)
    msd = {k: v for k, v in get_model_state_dict(model, options=FULL).items() if k not in alias}
    return (msd, get_optimizer_state_dict(model, opt, options=FULL)) if opt is not None else msd


def save_resume(model, opt, step: int, out: str, state=None) -> None:
    """model + AdamW state + step to out/resume (safetensors and JSON, renamed into place). state: full_state()
    already gathered (FSDP: every rank gathers, rank 0 calls this)."""
    from safetensors.torch import save_file
    msd, osd = state or full_state(model, opt)
    d, tmp = os.path.join(out, "resume"), os.path.join(out, "resume.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_file({k: v.contiguous() for k, v in msd.items()}, os.path.join(tmp, "model.safetensors"))
    st = {f"{name}::{k}": v.reshape(-1) if v.dim() == 0 else v       # safetensors has no 0-d tensors
          for name, s in osd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    save_file(st, os.path.join(tmp, "optim.safetensors"))
    write_json(os.path.join(tmp, "step.json"), {"step": step})
    shutil.rmtree(d, ignore_errors=True)
    os.replace(tmp, d)


def load_resume(model, opt, out: str) -> int:
    """The step saved in out/resume (0 if none), after loading its weights and AdamW state into model and opt
    (under FSDP every rank calls this and keeps its own shard)."""
    from safetensors.torch import load_file
    d = os.path.join(out, "resume")
    if not os.path.isdir(d):
        return 0
    missing, unexpected = set_model_state_dict(model, load_file(os.path.join(d, "model.safetensors")),
                                               options=StateDictOptions(full_state_dict=True, strict=False))
    lost = set(missing) - tied_aliases(model)                       # only a tied alias may be absent
    if unexpected or lost:
        raise CheckpointError(f"{d}: resume state does not fit this model (missing {sorted(lost)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]})")
    state = {}
    for key, v in load_file(os.path.join(d, "optim.safetensors")).items():
        name, k = key.rsplit("::", 1)
        state.setdefault(name, {})[k] = v.reshape(()) if k == "step" else v
    groups = get_optimizer_state_dict(model, opt)["param_groups"]   # this run's hyper-parameters, every rank
    set_optimizer_state_dict(model, opt, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
    return read_json(os.path.join(d, "step.json"))["step"]


# ----------------------------------------------------------------------------- optimisation
def lr_at(step: int, total: int, warmup: float, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup`·total steps, then cosine decay to `floor` of the
    peak (sft.py: 10 %; vla_train.py: 0)."""
    w = max(1, int(warmup * total))
    if step < w:
        return (step + 1) / w
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * (step - w) / max(1, total - w)))


def configure_optimizers(groups: list[dict], weight_decay: float, **adamw) -> torch.optim.AdamW:
    """AdamW as nanoGPT configures it: each group {"params": [(name, p), ...], "lr": ...} is split in two, weight
    decay only on the ≥ 2-D weight matrices; none on norms and biases (1-D) nor on embedding tables (token embeddings,
    the tied LM head with them, learned position tables `pos`): decaying a gain towards 0 or a rarely used row pulls
    it somewhere no gradient asked for. Frozen parameters are left out."""
    decays = lambda n, p: p.dim() >= 2 and "embed_tokens" not in n and n.rsplit(".", 1)[-1] != "pos"   # not tables
    split = []
    for g in groups:
        named = [(n, p) for n, p in g["params"] if p.requires_grad]
        decay = [p for n, p in named if decays(n, p)]
        other = [p for n, p in named if not decays(n, p)]
        extra = {k: v for k, v in g.items() if k != "params"}
        split += [{"params": decay, "weight_decay": weight_decay, **extra}, {"params": other, "weight_decay": 0.0, **extra}]
    return torch.optim.AdamW([g for g in split if g["params"]], **adamw)


def shard(model) -> None:
    """FSDP2 in place: each ViT block and each decoder layer is one unit (its weights are gathered just for its
    own forward and backward); the vision tower (patch embed, merger) and the tiny model's adapter are units too,
    because `generate` encodes the image outside the root's forward; the root holds the rest (embeddings and
    the tied LM head)."""
    adapter = getattr(model.model, "vision_adapter", None)
    for unit in [*model.model.visual.blocks, model.model.visual, *model.model.language_model.layers, adapter, model]:
        if unit is not None:
            fully_shard(unit)


