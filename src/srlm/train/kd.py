"""Knowledge distillation from a teacher checkpoint into the student, at the sequence or the logit level.

Supports:
- `mode: sequence` -- sequence-level KD (Kim & Rush 2016, arXiv 1606.07947) with rejection
  sampling: the teacher samples `samples_per_prompt` solutions per training prompt through srlm's
  engine, the task's verifier keeps the correct ones (at most `keep_per_prompt` distinct ones per
  prompt; the kept fraction is reported), the set is saved as jsonl (`generated`, reused when it
  exists) and the student is fine-tuned on it with the SFT stage's data path.
- `mode: logit` -- the student matches the teacher's next-token distributions on the assistant
  tokens: forward KL, reverse KL or GKD's JSD(beta) (arXiv 2306.13649) with a temperature,
  computed chunked from hidden states (`srlm.train.losses.distill_loss`), mixed with the SFT
  cross-entropy as `kd_ratio * KD + (1 - kd_ratio) * CE`. With `on_policy > 0` (GKD's lambda), that
  fraction of micro-batches puts the divergence on the student's own samples of the batch's
  prompts instead of the dataset's answers (the CE term stays on the dataset).
The teacher must share the student's tokenizer (same vocabulary and the same ids for a probe
string); otherwise the run is refused with an `SrlmError`.

    srlm train kd --config src/srlm/recipes/configs/kd-tiny.yaml teacher=runs/teacher/final init_from=runs/sft/final
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from srlm.data.io import write_text_atomic
from srlm.errors import SrlmError
from srlm.infer.sampling import SamplingParams
from srlm.model.transformer import chunked_cross_entropy
from srlm.train.distributed import SamplingPolicy, is_main
from srlm.train.loop import train, uses_bf16
from srlm.train.losses import DISTILL_KINDS, distill_loss
from srlm.train.sft import SFTConfig, SFTStage, prepare, recipe_config  # noqa: F401 (recipe_config: KD's too)

PROBE = "Tom has 12 apples. <think>\n12 + 30 = 42\n</think>\n\nThe answer is 42. Émilie's café, 3.5%!"


@dataclass
class KDConfig(SFTConfig):
    #: teacher checkpoint: folder, .gguf file or Hub id (same tokenizer as the student)
    teacher: str = ""
    #: logit (match the teacher's distributions) | sequence (fine-tune on the teacher's verified samples)
    mode: str = "logit"
    # ---- logit-level
    #: forward_kl KL(teacher||student) | reverse_kl KL(student||teacher) | jsd (GKD's JSD(beta))
    divergence: str = "forward_kl"
    #: JSD interpolation: 0 = forward KL, 1 = reverse KL
    jsd_beta: float = 0.5
    #: softens both distributions; the loss is scaled by temperature**2
    temperature: float = 1.0
    #: loss = kd_ratio * divergence + (1 - kd_ratio) * cross-entropy on the data
    kd_ratio: float = 0.5
    #: fraction of micro-batches whose divergence is taken on the student's own samples (GKD's lambda)
    on_policy: float = 0.0
    #: how the student's on-policy samples are drawn ({temperature, max_new_tokens, top_p, ...})
    on_policy_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(temperature=1.0, max_new_tokens=256)
    )
    # ---- sequence-level
    #: teacher samples per prompt
    samples_per_prompt: int = 4
    #: keep at most this many distinct correct samples per prompt
    keep_per_prompt: int = 1
    #: how the teacher's samples are drawn
    teacher_sampling: SamplingParams = field(
        default_factory=lambda: SamplingParams(temperature=0.8, max_new_tokens=256)
    )
    #: prompts per generation call
    sample_batch: int = 16
    #: where the verified teacher samples go (default OUT_DIR/kd_data.jsonl); reused when the file exists
    generated: str | None = None


def check_same_tokenizer(student_tok, teacher_tok, teacher_path: str) -> None:
    """Refuse a teacher whose tokenizer differs: logits over different vocabularies cannot be compared."""
    s_vocab, t_vocab = student_tok.backend.get_vocab(), teacher_tok.backend.get_vocab()
    if s_vocab != t_vocab:
        diff = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))[:3]
        raise SrlmError(
            f"teacher {teacher_path}: its tokenizer differs from the student's ({len(t_vocab)} vs "
            f"{len(s_vocab)} tokens; first differences {diff}); distillation needs the same "
            f"tokenizer: pick a teacher of the student's family or re-train the student's tokenizer"
        )
    if student_tok.encode(PROBE) != teacher_tok.encode(PROBE):
        raise SrlmError(
            f"teacher {teacher_path}: the tokenizers have the same vocabulary but split the probe "
            f"string {PROBE!r} differently (other merges or pre-tokenizer); use the student's tokenizer"
        )


def load_teacher(config: KDConfig, student_tok):
    from srlm.model import load

    if not config.teacher:
        raise SrlmError("kd needs teacher=FOLDER (a checkpoint with the student's tokenizer)")
    from srlm.model.hub import is_hub_id

    if not Path(config.teacher).exists() and not is_hub_id(config.teacher):
        raise SrlmError(f"teacher={config.teacher}: no such checkpoint folder or .gguf file")
    model, tok = load(config.teacher, dtype="float32")
    if tok is None:
        raise SrlmError(f"teacher {config.teacher}: no tokenizer.json; cannot check it matches the student's")
    check_same_tokenizer(student_tok, tok, config.teacher)
    return model.eval().requires_grad_(False), tok


# ---------------------------------------------------------------------------------------------
# Sequence-level: rejection sampling from the teacher


def generate_verified(config: KDConfig, teacher, tokenizer) -> tuple[list[list[dict]], dict]:
    """Teacher samples on the train prompts of every task source in `config.data`, verified.

    Returns (conversations of kept samples, stats with the kept fraction). Written to `generated`.
    """
    from srlm.data.tasks import get_task
    from srlm.infer.engine import Engine

    engine = Engine(teacher, tokenizer)
    records, n_samples, n_correct, n_prompts, n_solved = [], 0, 0, 0, 0
    t0 = time.perf_counter()
    for src in config.data:
        options = dict(config.data_options)
        data = options.pop("data", None)
        if Path(src).suffix in (".jsonl", ".json"):
            raise SrlmError(
                f"sequence-level KD verifies samples with a task's verifier; data={src} is a file: "
                f"give a task name (e.g. gsm8k with data_options: {{data: {src}}})"
            )
        task = get_task(src, **options)
        examples = task.load(split="train", data=data, limit=config.data_limit)
        for s in range(0, len(examples), config.sample_batch):
            part = examples[s : s + config.sample_batch]
            prompts = [tokenizer.apply_chat_template(_user(ex, config), add_generation_prompt=True) for ex in part]
            groups = engine.generate(
                prompts, sampling=config.teacher_sampling, n=config.samples_per_prompt, seed=config.seed * 7919 + s
            )
            for ex, group in zip(part, groups):
                n_prompts += 1
                kept: list[str] = []
                for c in group:
                    n_samples += 1
                    ok = c.finish_reason == "stop" and task.is_correct(task.extract(c.text or ""), ex)
                    n_correct += ok
                    text = (c.text or "").strip()
                    if ok and text not in kept and len(kept) < config.keep_per_prompt:
                        kept.append(text)
                n_solved += bool(kept)
                for text in kept:
                    records.append(
                        {
                            "id": ex.id,
                            "source": src,
                            "messages": _user(ex, config) + [{"role": "assistant", "content": text}],
                        }
                    )
    stats = {
        "prompts": n_prompts,
        "samples": n_samples,
        "correct": n_correct,
        "kept": len(records),
        "kept_fraction": n_correct / max(n_samples, 1),
        "solved_fraction": n_solved / max(n_prompts, 1),
        "seconds": time.perf_counter() - t0,
    }
    return [r["messages"] for r in records], {"records": records, **stats}


def _user(ex, config: KDConfig) -> list[dict]:
    return ([{"role": "system", "content": config.system}] if config.system else []) + [
        {"role": "user", "content": ex.prompt}
    ]


def _generated_path(config: KDConfig) -> Path:
    return Path(config.generated) if config.generated else Path(config.out_dir) / "kd_data.jsonl"


def sequence_data(config: KDConfig, tokenizer) -> tuple[list[list[dict]], dict]:
    """The verified teacher set: read from `generated` when it exists, else sampled and written there."""
    from srlm.data.chat import read_conversations

    path = _generated_path(config)
    if path.is_file():
        convs = read_conversations(path)
        meta_path = path.with_suffix(".json")
        stats = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return convs, {**stats, "reused": str(path)}
    teacher, _ = load_teacher(config, tokenizer)
    convs, stats = generate_verified(config, teacher, tokenizer)
    if not convs:
        raise SrlmError(
            f"the teacher {config.teacher} solved none of {stats['prompts']} prompts "
            f"({stats['samples']} samples); train a stronger teacher or raise samples_per_prompt"
        )
    records = stats.pop("records")
    if is_main():  # under torchrun every rank sampled the same set; one writes it
        path.parent.mkdir(parents=True, exist_ok=True)
        # statistics first, the data last and atomically: a file found at `path` is always complete
        write_text_atomic(path.with_suffix(".json"), json.dumps(stats, indent=2) + "\n")
        write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return convs, stats


# ---------------------------------------------------------------------------------------------
# Logit-level


class KDStage(SFTStage):
    """SFT batches; loss = kd_ratio * divergence(teacher, student) + (1 - kd_ratio) * CE, summed over tokens."""

    name = "kd"

    def __init__(self, config: KDConfig, tokenizer, teacher, conversations=None, model=None):
        super().__init__(config, tokenizer, conversations)
        self.teacher = teacher
        self.tokenizer = tokenizer
        self._micro = 0
        # on-policy samples come from the student; under FSDP from a replica gathered from its shards
        self.sampling_policy = SamplingPolicy(model, config.fsdp and config.on_policy > 0)

    def batches(self, start, micro_batch_size):
        self._micro = start
        for b in super().batches(start, micro_batch_size):
            # GKD's lambda: a pure function of the micro-batch index, so resume and DDP ranks agree
            b["on_policy"] = bool(
                np.random.default_rng([self.config.seed, 17, self._micro]).random() < self.config.on_policy
            )
            b["index"] = self._micro
            self._micro += 1
            yield b

    @torch.no_grad()
    def _student_samples(self, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's prompts completed by the student: (ids, supervised-position mask)."""
        from srlm.train.rollout import pad_rows, sample

        cfg = self.config
        ids, labels = batch["input_ids"], batch["labels"]
        starts = (labels != -100).int().argmax(1).tolist()  # first assistant token = end of the prompt
        prompts = [ids[r, :s].tolist() for r, s in enumerate(starts)]
        groups = sample(
            self.sampling_policy(model),
            self.tokenizer,
            prompts,
            sampling=cfg.on_policy_sampling,
            n=1,
            seed=cfg.seed * 104729 + int(batch["index"]),
            dtype=torch.bfloat16 if uses_bf16(cfg, ids.device) else None,
        )
        return pad_rows(prompts, [g[0].token_ids for g in groups], self.pad_id, device=ids.device)

    def _divergence(self, model, ids, mask):
        cfg = self.config
        h_s = model.hidden_states(ids)[:, :-1][mask]
        t = self.teacher
        if next(t.parameters()).device != ids.device:
            t.to(ids.device)
        with torch.no_grad():
            h_t = t.hidden_states(ids)[:, :-1][mask]
        return distill_loss(
            h_s,
            model.lm_head.weight,
            h_t,
            t.lm_head.weight,
            kind=cfg.divergence,
            beta=cfg.jsd_beta,
            temperature=cfg.temperature,
        ), h_s

    def loss(self, model, batch):
        cfg = self.config
        ids, labels = batch["input_ids"], batch["labels"]
        targets = labels[:, 1:]
        keep = targets != -100
        n = int(keep.sum())
        if batch.get("on_policy"):
            s_ids, s_mask = self._student_samples(model, batch)
            kd, _ = self._divergence(model, s_ids, s_mask)
            # the divergence is a per-token mean over the samples, rescaled to this batch's units
            kd = kd / max(int(s_mask.sum()), 1) * n
            ce = model.loss(ids, labels, reduction="sum") if cfg.kd_ratio < 1 else kd * 0.0
        else:
            kd, h_s = self._divergence(model, ids, keep)
            ce = chunked_cross_entropy(h_s, model.lm_head.weight, targets[keep]) if cfg.kd_ratio < 1 else kd * 0.0
        loss = cfg.kd_ratio * kd + (1 - cfg.kd_ratio) * ce
        d = max(n, 1)
        return loss, {"kd": kd.detach() / d, "ce": ce.detach() / d, "on_policy": float(bool(batch.get("on_policy")))}


def _check(config: KDConfig) -> None:
    if config.mode not in ("logit", "sequence"):
        raise SrlmError(f"mode={config.mode!r}: use logit or sequence")
    if config.divergence not in DISTILL_KINDS:
        raise SrlmError(f"divergence={config.divergence!r}: use one of {', '.join(DISTILL_KINDS)}")
    if not 0 <= config.jsd_beta <= 1 or not 0 <= config.kd_ratio <= 1 or not 0 <= config.on_policy <= 1:
        raise SrlmError("jsd_beta, kd_ratio and on_policy must lie in [0, 1]")
    if config.temperature <= 0:
        raise SrlmError(f"temperature={config.temperature} must be > 0")


def run(config: KDConfig, evaluate=None) -> dict:
    _check(config)
    model, tokenizer = prepare(config)
    if config.mode == "sequence":
        convs, stats = sequence_data(config, tokenizer)
        print(
            f"kd: {stats.get('kept', len(convs))} verified teacher samples "
            f"(kept fraction {stats.get('kept_fraction', float('nan')):.3f}) -> {_generated_path(config)}"
        )
        stage = SFTStage(config, tokenizer, conversations=convs)
        result = train(config, model, tokenizer, stage, evaluate=evaluate, stage_name="kd")
        return {
            **result,
            "kd_data": str(_generated_path(config)),
            **{f"kd_{k}": v for k, v in stats.items() if isinstance(v, (int, float))},
        }
    teacher, _ = load_teacher(config, tokenizer)
    stage = KDStage(config, tokenizer, teacher, model=model)
    return train(config, model, tokenizer, stage, evaluate=evaluate, stage_name="kd")


# ---------------------------------------------------------------------------------------------
# What `srlm run` asks of a stage module (KD trains on the SFT data)


def report_notes(result: dict, out_dir: Path) -> dict:
    """Sequence-level KD's verified-sample counts, for the run's report."""
    return {
        k: (round(v, 3) if isinstance(v, float) else v)
        for k, v in result.items()
        if k in ("kd_kept", "kd_kept_fraction", "kd_solved_fraction")
    }


Config = KDConfig
