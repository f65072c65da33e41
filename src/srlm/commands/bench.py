"""`srlm bench`: prefill and decode speed, time to first token and memory, as one JSON object.

    srlm bench PATH                                   # a checkpoint folder, .gguf file or Hub id
    srlm bench --preset qwen2.5-0.5b --random-init    # no weights needed
    srlm bench ... --quantize int8 --compare hf       # add srlm-int8 and transformers' generate
    srlm bench ... --rollout 16 32 64 --compare hf    # RL-sized batches: aggregate decode vs the roofline
    srlm bench ... --compare hf llama.cpp             # also llama.cpp (llama-cpp-python) on srlm's GGUF export

Every figure is wall-clock through the public API (`Engine.generate`, greedy, no stop ids):
decode tokens/s = batch x new tokens / time of the whole call (prompt prefill included, as
for transformers); prefill tokens/s = prefill length / time to generate one token from a
prompt that long; time to first token uses the decode prompt. With `--compare hf`,
transformers' `generate` runs on the same checkpoint (a `--random-init` model is saved to a
temporary folder first) in the same process, the variants alternating round by round so
a shared machine's load hits all alike; each figure is the best of `--rounds`. Peak RSS is
measured before transformers or llama.cpp is loaded. With `--quantize`, the quantized variant also reports
its quality against the unquantized model: greedy (top-1) agreement and mean KL, teacher-forced
on the unquantized model's greedy continuation of the last decode prompt, and both perplexities
on that continuation.

With `--compare llama.cpp`, llama.cpp runs the same prompts through llama-cpp-python (`pip install
llama-cpp-python`), alternating with the others: the checkpoint exported by `srlm.model.gguf.export`
in the type that matches srlm's dtype (float32 -> f32, bfloat16 -> bf16, falling back to f16 if
llama.cpp cannot run it, float16 -> f16; `--gguf-type` overrides), and with `--quantize int8` /
`int4` also a q8_0 / q4_0 export. A .gguf PATH stands in for the export of its own type and
otherwise runs beside them as `llama.cpp-<type>` (srlm runs its weights dequantized, so the float
export is srlm's match). Its figures are measured as srlm's are (one token from a `--prefill-len`
prompt; exactly `--new-tokens` greedy tokens, no stop, the prompt included; the context reset before
every run so no prompt is reused from the cache), with `--threads` threads (llama.cpp's default
micro-batch of 512 splits longer prefills). Its Python API decodes one sequence at a time, so decode
batches above 1 and rollouts are null for it.
`ratios_vs_llama_cpp` sets srlm against the file of the matching type (srlm -> the f32/bf16/f16
file, srlm-int8 -> q8_0, srlm-int4 -> q4_0). A checkpoint without a tokenizer llama.cpp can load
(a `--random-init` preset) gets a placeholder byte-level BPE vocabulary in the file; the prompts
are token ids, so speed does not depend on it. The result names llama-cpp-python's version and the
CPU features its llama.cpp was built with (`llama_cpp_system`).

`--rollout B [B ...]` measures what RL rollouts need: aggregate decode throughput of B sequences
of `--rollout-tokens` (256) new tokens from prompts of mixed lengths (`--prompt-len` / 2 to
2 x `--prompt-len`), and sets it against the machine's limits, measured in the same run: memory
read bandwidth (a large reduction) and matmul throughput (2048 x 2048 in the model's dtype).
The figure is the whole call, prompts' prefill included, as for transformers. For each batch,
`roofline` counts that call's work (`rollout_cost`): the prefill's FLOPs over the prompts' real
tokens and its weight bytes, and the decode steps' FLOPs, weight bytes and KV-cache bytes. Each
phase takes at least the longer of its bytes / bandwidth and its FLOPs / matmul throughput;
`bound_s` is their sum, the fastest the call could run on this machine, and `fraction_of_roofline`
= bound_s / the measured call time (1.0 would be the machine's limit). The CPU's name and its
avx2 / avx512 / bf16 / amx flags are printed with every result.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

from srlm.errors import SrlmError
from srlm.machine import cpu_info


def add_arguments(p) -> None:
    p.add_argument(
        "path", nargs="?", default=None, help="checkpoint folder, .gguf file or Hub id (or use --preset --random-init)"
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub id")
    p.add_argument("--preset", default=None, help="model preset name, with --random-init")
    p.add_argument("--random-init", action="store_true", help="random weights of the preset's shape")
    p.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a preset field, e.g. num_hidden_layers=4 (repeatable)",
    )
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the checkpoint's; bfloat16 for presets)")
    from srlm.infer.quant import QUANT_MODES

    p.add_argument(
        "--quantize", choices=list(QUANT_MODES), default=None, help="also measure int8 or int4 weight-only srlm"
    )
    p.add_argument(
        "--compare",
        nargs="+",
        choices=["hf", "llama.cpp"],
        default=[],
        help="also run transformers' generate (hf) and/or llama.cpp (llama-cpp-python), alternating",
    )
    p.add_argument(
        "--gguf-type",
        choices=["f32", "f16", "bf16"],
        default=None,
        help="type of the GGUF llama.cpp runs (default: srlm's dtype: f32, bf16 or f16)",
    )
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prefill-len", type=int, default=512)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="decode batch sizes")
    p.add_argument(
        "--rollout",
        type=int,
        nargs="*",
        default=None,
        metavar="B",
        help="also measure rollout-sized batches (e.g. 16 32 64) against the machine's roofline",
    )
    p.add_argument("--rollout-tokens", type=int, default=256, help="new tokens per rollout sequence")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds; each figure is the best")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SrlmError(f"--override {item!r}: expected FIELD=VALUE, e.g. num_hidden_layers=4")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _materialise(args, tmp: Path) -> tuple[Path, Path | None]:
    """The checkpoint folder to benchmark: PATH (a GGUF converted under `tmp`, so every backend reads the
    same folder), or a random-init preset saved under `tmp`; and the GGUF file PATH is, if it is one."""
    if args.path:
        if args.preset or args.random_init:
            raise SrlmError("give either a checkpoint PATH or --preset NAME --random-init, not both")
        from srlm.model.hub import resolve

        path = resolve(args.path, args.revision)
        if path.is_file() and path.suffix.lower() == ".gguf":
            from srlm.model import save
            from srlm.model.gguf import load

            model, tokenizer = load(path)
            return save(model, tmp / path.stem, tokenizer=tokenizer), path
        return path, None
    if not (args.preset and args.random_init):
        raise SrlmError("srlm bench needs a checkpoint PATH, or --preset NAME --random-init (no weights needed)")
    import torch

    from srlm.model import CausalLM, preset, save

    config = preset(args.preset, **_parse_overrides(args.override))
    torch.manual_seed(args.seed)
    model = CausalLM(config).eval()
    folder = tmp / args.preset
    save(model, folder, dtype=args.dtype or "bfloat16")
    del model
    return folder, None


class _Srlm:
    def __init__(self, folder: Path, dtype, quantize):
        from srlm.infer.engine import Engine
        from srlm.infer.quant import load_for_inference

        model, _ = load_for_inference(folder, dtype=dtype, quantize=quantize)
        self.engine = Engine(model)
        self.vocab = model.config.vocab_size
        self.dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        if quantize:
            self.dtype = f"{quantize} weights, {self.dtype} activations"

    def run(self, prompts, new_tokens: int) -> int:
        out = self.engine.generate(prompts, max_new_tokens=new_tokens, temperature=0, stop_token_ids=[])
        return sum(len(g[0].token_ids) for g in out)


def machine_limits(dtype) -> dict:
    """Memory read bandwidth (GB/s, a 512 MB reduction) and matmul throughput (GFLOP/s, 2048^2 in `dtype`),
    each the best of a few tries."""
    import torch

    def read_bandwidth() -> float:
        x = torch.ones(128 * 2**20, dtype=torch.float32)
        x.sum()
        return x.numel() * 4 / min(_timed(lambda: float(x.sum()))[0] for _ in range(5)) / 1e9

    bw = read_bandwidth()  # its 512 MB are freed before the matmuls
    a = torch.randn(2048, 2048).to(dtype)
    b = torch.randn(2048, 2048).to(dtype)
    a @ b
    flops = max(2 * 2048**3 / _timed(lambda: a @ b)[0] for _ in range(5)) / 1e9
    return {"memory_read_gb_s": round(bw, 1), f"matmul_gflop_s_{str(dtype).replace('torch.', '')}": round(flops, 1)}


def rollout_cost(model, prompt_lens: list[int], new_tokens: int) -> dict:
    """Bytes read and FLOPs of one rollout call: the prefill of every prompt (its real tokens, logits at
    the last only) and `new_tokens` - 1 decode steps of all rows (the first token comes from the prefill).

    Weights: every Linear once per pass (int8/int4 buffers at their size); 2 FLOPs per weight per
    row; attention 4 x heads x head_dim FLOPs per attended position per row; the KV cache of every
    row read once a step. Activations are left out (small beside these at rollout sizes)."""
    import torch.nn as nn

    c = model.config
    weight_bytes = weights = head = 0
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if w is not None and not isinstance(m, nn.Embedding) and "norm" not in type(m).__name__.lower():
            weight_bytes += w.numel() * w.element_size()
            n = getattr(m, "in_features", 0) * getattr(m, "out_features", 0)
            weights += n
            head += n if name == "lm_head" else 0
    p0 = next(model.parameters())
    kv_elem = p0.element_size() if p0.is_floating_point() else 2
    layers = c.effective_layers
    att = layers * 4 * c.num_attention_heads * c.head_dim  # FLOPs per attended position per row
    kv_pos = layers * 2 * c.num_key_value_heads * c.head_dim * kv_elem  # cache bytes per position per row
    rows, steps = len(prompt_lens), max(0, new_tokens - 1)
    prompt_tokens = sum(prompt_lens)
    prefill_flops = (
        2 * (weights - head) * prompt_tokens + 2 * head * rows + att * sum(n * (n + 1) / 2 for n in prompt_lens)
    )
    # decode step j (1..steps) attends to prompt + j positions
    attended = sum(n * steps + steps * (steps + 1) / 2 for n in prompt_lens)
    return {
        "prompt_tokens": prompt_tokens,
        "decode_steps": steps,
        "weight_bytes": weight_bytes,
        "prefill_flops": int(prefill_flops),
        "decode_flops": int(2 * weights * rows * steps + att * attended),
        "decode_kv_bytes": int(kv_pos * attended),
    }


class _HF:
    def __init__(self, folder: Path, dtype):
        import torch
        import transformers

        from srlm.model.checkpoint import torch_dtype

        kw = {"dtype": torch_dtype(dtype)} if dtype else {"dtype": "auto"}
        self.model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kw).eval()
        self.dtype = str(self.model.dtype).replace("torch.", "")
        self.torch = torch

    def run(self, prompts, new_tokens: int) -> int:
        torch = self.torch
        width = max(len(p) for p in prompts)  # mixed lengths are left-padded, as generate expects
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        return (out.shape[1] - ids.shape[1]) * ids.shape[0]


def _llama_cpp():
    from srlm.infer.llama_cpp import llama_cpp_module

    return llama_cpp_module("--compare llama.cpp")


#: srlm's quantized variants and the llama.cpp type each is set against
GGUF_QUANT = {"int8": "q8_0", "int4": "q4_0"}
_GGUF_FOR_DTYPE = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}


def _gguf_file_type(path: Path) -> str:
    """A GGUF's general.file_type as `srlm export --type` names it (f16, q8_0, q4_k_m, ...)."""
    import gguf

    from srlm.model.gguf import read_header

    _, meta = read_header(path)
    try:
        name = gguf.LlamaFileType(int(meta["general.file_type"])).name
    except (KeyError, ValueError, TypeError):
        return "unknown"
    return name.lower().removeprefix("mostly_").removeprefix("all_")


class _GGUFExports:
    """GGUF files of the checkpoint, written under `tmp` by srlm's exporter on first use (from float32
    weights, so nothing is rounded twice), with a placeholder tokenizer where the checkpoint has none
    that llama.cpp would take."""

    def __init__(self, folder: Path, tmp: Path):
        self.folder, self.tmp = folder, tmp
        self.model = self.tokenizer = None
        self.notes: list[str] = []

    def _load(self):
        from srlm.model import load
        from srlm.model.gguf import pre_tokenizer_name

        model, tok = load(self.folder, dtype="float32")
        why = "the checkpoint has no tokenizer" if tok is None else None
        if tok is not None:
            try:
                pre_tokenizer_name(tok)
            except SrlmError as e:
                why = f"the checkpoint's tokenizer cannot go into a GGUF ({e})"
        if why:
            from srlm.tokenizer import train_bpe

            tok = train_bpe(["placeholder vocabulary for srlm bench"] * 2, 300)  # needs merges for llama.cpp
            self.notes.append(
                f"{why}: the GGUF carries a placeholder byte-level BPE vocabulary "
                "(the prompts are token ids, so speed does not depend on it)"
            )
        self.model, self.tokenizer = model, tok

    def get(self, qtype: str) -> Path:
        from srlm.model.gguf import export

        if self.model is None:
            self._load()
        out = self.tmp / f"bench-{qtype}.gguf"
        if not out.exists():
            print(f"# exporting {qtype} GGUF for llama.cpp", file=sys.stderr, flush=True)
            export(self.model, self.tokenizer, out, qtype)
        return out

    def close(self):
        self.model = self.tokenizer = None  # the float32 copy is not kept through the measurements


class _LlamaCpp:
    """llama.cpp through llama-cpp-python, one sequence at a time (its Python API decodes no batch > 1)."""

    batch1_only = True

    def __init__(self, path: Path, gguf_type: str, source: str, threads: int, n_ctx: int, n_batch: int, closing):
        Llama = _llama_cpp().Llama
        try:
            self.llm = Llama(
                str(path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                verbose=False,
            )
        except ValueError as e:  # llama-cpp-python's "Failed to load model from file"
            raise SrlmError(f"llama.cpp cannot load {path.name} ({gguf_type}): {e}") from None
        closing.callback(self.llm.close)
        self.dtype = f"gguf {gguf_type}"
        self.gguf_type, self.source = gguf_type, source
        self.gguf_mib = round(path.stat().st_size / 2**20, 2)

    def run(self, prompts, new_tokens: int) -> int:
        (prompt,) = prompts
        self.llm.reset()  # nothing of an earlier run is reused: the whole prompt is evaluated every time
        n = 0
        tokens = self.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
        try:
            for _ in tokens:  # greedy; exactly new_tokens, EOS included, like srlm's stop_token_ids=[]
                n += 1
                if n >= new_tokens:
                    break
        finally:
            tokens.close()
        return n


def _llama_cpp_variants(args, source_gguf: Path | None, srlm_dtype: str, exports, threads: int, closing):
    """{name: _LlamaCpp} for the float file matching srlm's dtype, one per --quantize, and a given .gguf in its
    own type where none of those is it (each closed by the ExitStack `closing`); and notes on what was chosen."""
    n_ctx = max(args.prefill_len + 1, args.prompt_len + args.new_tokens, 16)
    kw = {"threads": threads, "n_ctx": n_ctx, "n_batch": max(512, args.prefill_len), "closing": closing}
    notes = []
    out = {}
    given = _gguf_file_type(source_gguf) if source_gguf is not None else None

    def run_type(qtype: str) -> _LlamaCpp:  # the given file where it is of that type, else srlm's export
        if qtype == given:
            return _LlamaCpp(source_gguf, qtype, "the given file", **kw)
        return _LlamaCpp(exports.get(qtype), qtype, "srlm export", **kw)

    want = args.gguf_type or _GGUF_FOR_DTYPE.get(srlm_dtype, "f32")
    try:
        out["llama.cpp"] = run_type(want)
        out["llama.cpp"].run([[1, 2, 3]], 2)  # a type llama.cpp loads but cannot compute fails here
    except Exception as e:
        if want != "bf16" or args.gguf_type:
            raise
        notes.append(f"llama.cpp could not run the bf16 export ({type(e).__name__}: {e}); it runs f16")
        out["llama.cpp"] = run_type("f16")
    if args.quantize:
        q = GGUF_QUANT[args.quantize]
        out[f"llama.cpp-{q}"] = run_type(q)
    if given is not None and given not in {v.gguf_type for v in out.values()}:
        # the user's own file too, in its own type (srlm runs its weights dequantized: no matching variant)
        out[f"llama.cpp-{given}"] = _LlamaCpp(source_gguf, given, "the given file", **kw)
    notes.append(
        "decode batches above 1 and rollouts are null for llama.cpp: llama-cpp-python's Llama decodes one "
        "sequence per context"
    )
    return out, notes


def _quantization_quality(ref_engine, q_engine, prompt: list[int], new_tokens: int) -> dict:
    """How far the quantized model's next-token distributions are from the reference's, teacher-forced
    on the reference's own greedy continuation of `prompt`: top-1 (greedy) agreement, mean KL(ref || q)
    in nats, and each model's perplexity on that continuation."""
    import torch

    cont = ref_engine.generate([prompt], max_new_tokens=new_tokens, temperature=0, stop_token_ids=[])[0][0].token_ids
    ids = torch.tensor([prompt + cont])
    sl = slice(len(prompt) - 1, ids.shape[1] - 1)  # positions that predict the continuation
    targets = ids[0, len(prompt) :]
    with torch.inference_mode():
        lp_ref = torch.log_softmax(ref_engine.model(ids)[0, sl].float(), -1)
        lp_q = torch.log_softmax(q_engine.model(ids)[0, sl].float(), -1)
    kl = (lp_ref.exp() * (lp_ref - lp_q)).sum(-1).mean()

    def nll(lp):
        return float(-lp.gather(-1, targets[:, None]).mean())

    return {
        "tokens": len(cont),
        "greedy_agreement": round(float((lp_ref.argmax(-1) == lp_q.argmax(-1)).float().mean()), 4),
        "kl_nats": round(float(kl), 5),
        "ppl_reference": round(math.exp(nll(lp_ref)), 3),
        "ppl_quantized": round(math.exp(nll(lp_q)), 3),
    }


def _timed(fn, *a) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = fn(*a)
    return time.perf_counter() - t0, n


def main(args) -> int:
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    for name in ("prompt_len", "new_tokens", "prefill_len", "rounds"):
        if getattr(args, name) <= 0:
            raise SrlmError(f"--{name.replace('_', '-')} must be positive")
    if any(b <= 0 for b in args.batch):
        raise SrlmError("--batch sizes must be positive")
    if "llama.cpp" in args.compare:
        _llama_cpp()  # not installed: say so before any work
    # the ExitStack closes llama.cpp's models before the temporary folder with their files goes
    with tempfile.TemporaryDirectory(prefix="srlm-bench-") as tmp, contextlib.ExitStack() as closing:
        folder, source_gguf = _materialise(args, Path(tmp))
        dtype = args.dtype or ("bfloat16" if args.random_init else None)
        variants: dict[str, object] = {"srlm": _Srlm(folder, dtype, None)}
        if args.quantize:
            variants[f"srlm-{args.quantize}"] = _Srlm(folder, dtype, args.quantize)
        peak_rss = _peak_rss_mb()
        srlm_names = list(variants)
        if "hf" in args.compare:
            variants["hf"] = _HF(folder, dtype)
        llama_notes: list[str] = []
        if "llama.cpp" in args.compare:
            exports = _GGUFExports(folder, Path(tmp))
            lc, llama_notes = _llama_cpp_variants(
                args, source_gguf, variants["srlm"].dtype, exports, torch.get_num_threads(), closing
            )
            variants.update(lc)
            llama_notes = exports.notes + llama_notes
            exports.close()
        ref = variants["srlm"]
        g = torch.Generator().manual_seed(args.seed)
        vocab = ref.vocab
        if args.prefill_len + 1 > ref.engine.max_context or args.prompt_len + args.new_tokens > ref.engine.max_context:
            raise SrlmError(f"prompt and generation lengths exceed the model's context of {ref.engine.max_context}")

        def prompts(b, length):
            return torch.randint(1, vocab, (b, length), generator=g).tolist()

        def mixed(b):
            lo, hi = max(1, args.prompt_len // 2), 2 * args.prompt_len
            lens = torch.randint(lo, hi + 1, (b,), generator=g).tolist()
            return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lens]

        rollouts = args.rollout or []
        if rollouts and 2 * args.prompt_len + args.rollout_tokens > ref.engine.max_context:
            raise SrlmError(
                f"--rollout: prompts up to {2 * args.prompt_len} plus {args.rollout_tokens} new tokens "
                f"exceed the model's context of {ref.engine.max_context}"
            )
        work = [("prefill", prompts(1, args.prefill_len), 1), ("ttft", prompts(1, args.prompt_len), 1)]
        work += [(f"decode_b{b}", prompts(b, args.prompt_len), args.new_tokens) for b in args.batch]
        work += [(f"rollout_b{b}", mixed(b), args.rollout_tokens) for b in rollouts]
        for v in variants.values():  # warm-up: first calls pay allocation and kernel selection
            v.run(prompts(1, 8), 4)
        best: dict[str, dict[str, float]] = {name: {} for name in variants}
        for _ in range(args.rounds):
            for key, ps, new in work:
                for name, v in variants.items():
                    if getattr(v, "batch1_only", False) and len(ps) > 1:
                        continue
                    dt, n = _timed(v.run, ps, new)
                    rate = (len(ps[0]) if key == "prefill" else n) / dt
                    cur = best[name].get(key)
                    if key == "ttft":
                        best[name][key] = dt if cur is None else min(cur, dt)
                    else:
                        best[name][key] = rate if cur is None else max(cur, rate)
                    print(f"# {name} {key}: {dt:.3f}s", file=sys.stderr, flush=True)

        limits = machine_limits(next(ref.engine.model.parameters()).dtype) if rollouts else None
        quality = None
        if args.quantize:  # the quality change, next to the speed
            quality = _quantization_quality(
                ref.engine, variants[f"srlm-{args.quantize}"].engine, work[-1][1][0], args.new_tokens
            )

    def roofline(name, b, rate):
        ps = next(ps for key, ps, _ in work if key == f"rollout_b{b}")
        cost = rollout_cost(variants[name].engine.model, [len(p) for p in ps], args.rollout_tokens)
        call_s = b * args.rollout_tokens / rate
        bw = limits["memory_read_gb_s"] * 1e9
        peak = next(v for k, v in limits.items() if k.startswith("matmul")) * 1e9
        # each phase is bound by the slower of its bytes and its FLOPs; the call by the sum of its phases
        pre_mem, pre_flop = cost["weight_bytes"] / bw, cost["prefill_flops"] / peak
        steps = cost["decode_steps"]
        dec_mem = (steps * cost["weight_bytes"] + cost["decode_kv_bytes"]) / bw
        dec_flop = cost["decode_flops"] / peak
        bound = max(pre_mem, pre_flop) + max(dec_mem, dec_flop)

        def sig(x):  # 4 significant digits: these span microseconds to seconds
            return float(f"{x:.4g}")

        return {
            **cost,
            "call_s": sig(call_s),
            "prefill_bound_s": sig(max(pre_mem, pre_flop)),
            "decode_memory_bound_s": sig(dec_mem),
            "decode_compute_bound_s": sig(dec_flop),
            "bound_s": sig(bound),
            "bound_by": "compute" if pre_flop + dec_flop >= pre_mem + dec_mem else "memory",
            "fraction_of_roofline": sig(bound / call_s),
        }

    def rate(name, key):  # None where the variant did not run (llama.cpp beyond batch 1)
        x = best[name].get(key)
        return None if x is None else round(x, 1)

    def figures(name):
        b = best[name]
        out = {
            "prefill_tokens_per_s": round(b["prefill"], 1),
            "ttft_s": round(b["ttft"], 4),
            "decode_tokens_per_s": {str(k): rate(name, f"decode_b{k}") for k in args.batch},
            "dtype": variants[name].dtype,
        }
        if rollouts:
            out["rollout_tokens_per_s"] = {str(k): rate(name, f"rollout_b{k}") for k in rollouts}
            if name in srlm_names:
                out["roofline"] = {str(k): roofline(name, k, b[f"rollout_b{k}"]) for k in rollouts}
        if isinstance(variants[name], _LlamaCpp):
            out.update(gguf_type=variants[name].gguf_type, gguf_mib=variants[name].gguf_mib)
            out["gguf_source"] = variants[name].source
        return out

    def ratios(name, other):
        def r(key):
            a, b = best[name].get(key), best[other].get(key)
            return None if a is None or b is None else round(a / b, 2)

        return {
            "prefill": r("prefill"),
            "ttft": round(best[other]["ttft"] / best[name]["ttft"], 2),
            **{f"decode_b{b}": r(f"decode_b{b}") for b in args.batch},
            **{f"rollout_b{b}": r(f"rollout_b{b}") for b in rollouts},
        }

    result = {
        "model": args.preset or str(args.path),
        "random_init": bool(args.random_init),
        "overrides": _parse_overrides(args.override) or None,
        "params": sum(p.numel() for p in ref.engine.model.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "prefill_len": args.prefill_len,
        "rounds": args.rounds,
        "peak_rss_mb": peak_rss,
        **cpu_info(),
        **figures("srlm"),
    }
    if limits:
        result["machine_limits"] = limits
        result["rollout_new_tokens"] = args.rollout_tokens
    for name in variants:
        if name != "srlm":
            result[name] = figures(name)
            if quality is not None and name == f"srlm-{args.quantize}":
                result[name]["quality_vs_srlm"] = quality
    if "hf" in variants:
        import transformers

        result["transformers"] = transformers.__version__
        result["ratios_vs_hf"] = {name: ratios(name, "hf") for name in srlm_names}
    if "llama.cpp" in variants:
        llama_cpp = _llama_cpp()
        result["llama_cpp"] = llama_cpp.__version__
        result["llama_cpp_system"] = llama_cpp.llama_print_system_info().decode(errors="replace").strip(" |")
        result["llama_cpp_notes"] = llama_notes
        # srlm against the file of the matching type: srlm -> the f32/bf16/f16 file, int8 -> q8_0, int4 -> q4_0
        against = {"srlm": "llama.cpp", **{f"srlm-{q}": f"llama.cpp-{t}" for q, t in GGUF_QUANT.items()}}
        result["ratios_vs_llama_cpp"] = {
            name: {"vs": f"{against[name]} ({variants[against[name]].gguf_type})", **ratios(name, against[name])}
            for name in srlm_names
        }
    print(json.dumps(result))
    return 0
