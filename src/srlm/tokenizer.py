"""Text <-> token ids, the chat template, and byte-level BPE training.

A `Tokenizer` wraps a Hugging Face `tokenizers.Tokenizer` (`tokenizer.json`) plus
the folder's `tokenizer_config.json`, `special_tokens_map.json`,
`chat_template.jinja` and `generation_config.json`. It reads and writes the same
files as transformers, and `apply_chat_template` renders and tokenizes exactly as
`transformers.AutoTokenizer.apply_chat_template` does (same sandboxed jinja
environment, chat tokenized without adding special tokens again).
`StreamDecoder` turns ids arriving one at a time into text deltas whose
concatenation is the full decode. `train_bpe` builds a Qwen-style byte-level BPE
(single digits, ChatML template) for from-scratch models, with llama.cpp's `qwen2`
pre-tokenizer and no normalizer, so llama.cpp tokenizes its exports id for id. Knows
nothing of models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from srlm.data.io import read_texts
from srlm.errors import SrlmError

# The named special tokens transformers passes to chat templates (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# Tokens that end an assistant turn in common chat formats. A model stops on them even
# when tokenizer_config's eos is the document end (Qwen base: <|endoftext|>, Llama 3: <|end_of_text|>).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>")

# Qwen2's split: contractions, letter runs, *one digit per piece* (tiny models learn
# arithmetic far better when 123 is 1,2,3), punctuation runs, newlines, spaces.
QWEN2_SPLIT_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501  (verbatim)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Added tokens of a tokenizer made by `train_bpe`: (content, special). <think> tags are
# not special, so they survive decode(skip_special_tokens=True) as in Qwen3.
TRAINED_ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<think>", False),
    ("</think>", False),
)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SrlmError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}); fix or remove the file") from None


def _token_content(value) -> str | None:
    """A special token as written in the config: a string, or a dict with "content" (AddedToken)."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


@lru_cache(maxsize=16)
@lru_cache(maxsize=1)
def _byte_level_bytes() -> dict[str, int]:
    """GPT-2's byte-to-character table of byte-level BPE, inverted: character -> the byte it stands for."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    chars = dict(zip(printable, printable))
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


def _compile_template(source: str):
    """Compile like transformers' `_compile_jinja_template`, so templates render identically."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters, which would change the prompt.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(source)


def _clean_messages(messages: list[dict]) -> list[dict]:
    """Drop None values and alias reasoning fields, as transformers does before rendering."""
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SrlmError(f"chat message {i} is {type(message).__name__}, expected a dict with 'role' and 'content'")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in ("reasoning_content", "thinking", "reasoning") if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


class Tokenizer:
    """A `tokenizers.Tokenizer` with the special tokens and chat template of a checkpoint folder."""

    def __init__(
        self,
        backend,
        *,
        config: dict | None = None,
        chat_template: str | dict[str, str] | None = None,
        generation_eos_ids: Iterable[int] = (),
        source: str = "<memory>",
    ):
        from tokenizers import processors

        self.backend = backend
        self.config = dict(config or {})
        self.chat_template = chat_template
        self.source = source
        self.special_tokens = {
            name: tok for name in SPECIAL_TOKEN_NAMES if (tok := _token_content(self.config.get(name))) is not None
        }
        self.generation_eos_ids = [int(i) for i in generation_eos_ids]
        # tokenizer.json's post-processor decides what add_special_tokens adds (transformers 5
        # ignores add_bos_token when tokenizer.json exists). Without one, honour the config's
        # add_bos_token/add_eos_token as transformers 4's Llama tokenizer did.
        if backend.post_processor is None:
            bos, eos = (
                tok
                if self.config.get(flag)
                and (tok := self.special_tokens.get(name))
                and backend.token_to_id(tok) is not None
                else None
                for flag, name in (("add_bos_token", "bos_token"), ("add_eos_token", "eos_token"))
            )
            if bos or eos:
                single = " ".join([f"{bos}:0"] * bool(bos) + ["$A:0"] + [f"{eos}:0"] * bool(eos))
                specials = [(t, backend.token_to_id(t)) for t in (bos, eos) if t]
                backend.post_processor = processors.TemplateProcessing(single=single, special_tokens=specials)

    # ---- loading and saving -------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load a checkpoint or tokenizer folder written by transformers or by `save`."""
        from tokenizers import Tokenizer as Backend

        path = Path(path)
        tok_file = path / "tokenizer.json"
        if not tok_file.is_file():
            raise SrlmError(
                f"no tokenizer.json in {path}: srlm needs the fast-tokenizer file; "
                "save the tokenizer with transformers (tokenizer.save_pretrained) or train one with "
                "`srlm tokenizer train`"
            )
        try:
            backend = Backend.from_file(str(tok_file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise SrlmError(f"{tok_file}: cannot be read by the tokenizers library ({e})") from None

        config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        if (path / "special_tokens_map.json").is_file():
            legacy = "added_tokens_decoder" not in config  # transformers lets the map override only then
            for key, value in _read_json(path / "special_tokens_map.json").items():
                if legacy or key not in config:
                    config[key] = value

        chat_template = config.get("chat_template")
        if isinstance(chat_template, list):  # [{"name": ..., "template": ...}, ...]
            chat_template = {t["name"]: t["template"] for t in chat_template}
        if (path / "chat_template.jinja").is_file():  # transformers 5 saves it here; it wins over the config
            chat_template = (path / "chat_template.jinja").read_text(encoding="utf-8")

        eos_ids: list[int] = []
        if (path / "generation_config.json").is_file():
            eos = _read_json(path / "generation_config.json").get("eos_token_id")
            eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        return cls(backend, config=config, chat_template=chat_template, generation_eos_ids=eos_ids, source=str(path))

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json and tokenizer_config.json that both srlm and transformers load."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(path / "tokenizer.json"))
        config = {k: v for k, v in self.config.items() if k not in ("chat_template", "added_tokens_decoder")}
        config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
        config.update(self.special_tokens)
        config["added_tokens_decoder"] = {
            str(i): {
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            }
            for i, t in sorted(self.backend.get_added_tokens_decoder().items())
        }
        if isinstance(self.chat_template, dict):
            config["chat_template"] = [{"name": k, "template": v} for k, v in self.chat_template.items()]
        elif self.chat_template is not None:
            config["chat_template"] = self.chat_template
            # A stale chat_template.jinja would win over the config on reload: keep them equal.
            if (path / "chat_template.jinja").is_file():
                (path / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")
        (path / "tokenizer_config.json").write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    # ---- vocabulary -----------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the embedding needs at least this many rows)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def _special_id(self, name: str) -> int | None:
        tok = self.special_tokens.get(name)
        return None if tok is None else self.backend.token_to_id(tok)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        eos = self._special_id("eos_token")
        return eos if eos is not None else (self.generation_eos_ids[0] if self.generation_eos_ids else None)

    @property
    def pad_token_id(self) -> int:
        """pad, else eos, else unk, else 0: padding is masked out, any valid id will do."""
        for name in ("pad_token", "eos_token", "unk_token"):
            if (i := self._special_id(name)) is not None:
                return i
        return self.eos_token_id if self.eos_token_id is not None else 0

    @property
    def eos_token_ids(self) -> set[int]:
        """Every id that ends generation: eos, generation_config's eos list, end-of-turn tokens the template uses."""
        ids = set(self.generation_eos_ids)
        if self.eos_token_id is not None:
            ids.add(self.eos_token_id)
        templates = self.chat_template.values() if isinstance(self.chat_template, dict) else [self.chat_template or ""]
        for tok in END_OF_TURN_TOKENS:
            if any(tok in t for t in templates) and (i := self.backend.token_to_id(tok)) is not None:
                ids.add(i)
        return ids

    @property
    def has_chat_template(self) -> bool:
        return bool(self.chat_template)

    # ---- encode / decode ----------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`; add_special_tokens=True adds what the post-processor adds (e.g. BOS)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for. A byte-level BPE token can hold part of a UTF-8 character,
        which `decode` shows as U+FFFD; its bytes come from the token's own characters then."""
        text = self.decode([token_id])
        piece = self.backend.id_to_token(int(token_id)) if "\ufffd" in text else None
        if piece is not None:
            table = _byte_level_bytes()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
        return text.encode("utf-8")

    def encode_batch(self, texts: list[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        # transformers 5 ignores clean_up_tokenization_spaces for BPE, so we never apply it.
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = False) -> list[str]:
        return self.backend.decode_batch(
            [[int(i) for i in ids] for ids in batch], skip_special_tokens=skip_special_tokens
        )

    def stream_decoder(self, prompt_ids: Iterable[int] = (), skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, prompt_ids=prompt_ids, skip_special_tokens=skip_special_tokens)

    # ---- chat -----------------------------------------------------------------------------

    def _template_source(self, name: str | None, tools) -> str:
        where = f"{self.source}/tokenizer_config.json (or chat_template.jinja)"
        if not self.chat_template:
            raise SrlmError(
                f'no chat template in {where}: add a "chat_template" entry, '
                "or prompt the model with plain text instead of messages"
            )
        if isinstance(self.chat_template, str):
            return name if name is not None else self.chat_template
        templates = self.chat_template
        if name is not None:
            return templates.get(name, name)  # a name, or a template string given inline
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise SrlmError(
            f"{where} has several chat templates {sorted(templates)} and no 'default': pass chat_template=NAME"
        )

    def render_chat(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
        chat_template: str | None = None,
        **kwargs,
    ) -> str:
        """The chat as text, rendered by the template with transformers' variables."""
        import jinja2

        source = self._template_source(chat_template, tools)
        if not messages:
            raise SrlmError("cannot apply the chat template to an empty conversation: give at least one message")
        try:
            template = _compile_template(source)
        except jinja2.TemplateSyntaxError as e:
            raise SrlmError(f"chat template of {self.source}, line {e.lineno}: {e.message}") from None
        variables = {**self.special_tokens, **kwargs}
        try:
            return template.render(
                messages=_clean_messages(messages),
                tools=tools,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as e:  # raise_exception(...) in the template, or a template bug
            raise SrlmError(f"chat template of {self.source} refused the messages: {e}") from None

    def apply_chat_template(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        tokenize: bool = True,
        **kwargs,
    ) -> list[int] | str:
        """Token ids (or text, tokenize=False) of the chat; special tokens come only from the template."""
        text = self.render_chat(messages, add_generation_prompt=add_generation_prompt, **kwargs)
        return self.encode(text, add_special_tokens=False) if tokenize else text


class StreamDecoder:
    """Ids in one at a time, text deltas out; "".join(deltas) + flush() == decode(all ids).

    Each step decodes a short window (vLLM/TGI's prefix trick): delta = decode(prefix + new) -
    decode(prefix), so tokenizers that drop a word's leading space at the start of a decode
    (SentencePiece) keep it, and text is held back while it ends in U+FFFD (an incomplete
    multi-byte UTF-8 character split across tokens).
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: Iterable[int] = (), skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids = [int(i) for i in prompt_ids][-5:]  # a little context for the first token's spacing
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_id: int) -> str:
        """Add one id; return the new text it completes (often "", never half a character)."""
        self.ids.append(int(token_id))
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return text[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (invalid bytes come out as U+FFFD) once generation ends."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return text[len(prefix) :]


# ---- training -------------------------------------------------------------------------------


def train_bpe(
    source: Iterable[str | Path] | Iterable[str],
    vocab_size: int,
    min_frequency: int = 2,
    files: bool | None = None,
) -> Tokenizer:
    """Train a Qwen-style byte-level BPE: single digits, ChatML template, eos <|im_end|>, pad <|endoftext|>.

    `source` is a list of file paths (text or .jsonl with "text") or an iterator of strings;
    `files` forces one reading, otherwise a list whose items are all existing paths is read as files.
    `vocab_size` counts the 5 added tokens; a small corpus may stop short of it.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    n_added = len(TRAINED_ADDED_TOKENS)
    if vocab_size < 256 + n_added:
        raise SrlmError(f"vocab_size {vocab_size} is too small: byte-level BPE needs at least {256 + n_added}")
    if files is None:
        items = source if isinstance(source, (list, tuple)) else None
        files = bool(items) and all(isinstance(s, Path) or (isinstance(s, str) and Path(s).is_file()) for s in items)
    texts = read_texts(source) if files else (str(s) for s in source)

    backend = Backend(models.BPE())
    # No normalizer: llama.cpp applies none, and a GGUF export must split text exactly as srlm does
    # (Qwen2's own tokenizer.json has NFC, so llama.cpp differs from it on decomposed accents).
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # Added after training so they sit at the end of the vocabulary, as in Qwen.
    for content, special in TRAINED_ADDED_TOKENS:
        token = AddedToken(content, special=special, normalized=False)
        (backend.add_special_tokens if special else backend.add_tokens)([token])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": 1_000_000,
        "clean_up_tokenization_spaces": False,
    }
    return Tokenizer(backend, config=config, chat_template=CHATML_TEMPLATE, source="<trained>")
