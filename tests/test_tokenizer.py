"""Tokenizer: loading checkpoint folders, chat templates against transformers, streaming, BPE training."""

import json
from argparse import Namespace

import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as Backend

from srlm.commands.tokenizer import add_arguments, main
from srlm.errors import SrlmError
from srlm.tokenizer import StreamDecoder, Tokenizer, train_bpe

# Qwen2.5-Instruct's published template (tokenizer_config.json "chat_template").
QWEN25_TEMPLATE = (
    "{%- if tools %}\n"
    "    {{- '<|im_start|>system\\n' }}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n"
    "    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n"
    "    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    "    {%- for tool in tools %}\n"
    '        {{- "\\n" }}\n'
    "        {{- tool | tojson }}\n"
    "    {%- endfor %}\n"
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n'
    "{%- else %}\n"
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"  # noqa: E501  (verbatim)
    "    {%- endif %}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n'
    "        {{- '<|im_start|>' + message.role }}\n"
    "        {%- if message.content %}\n"
    "            {{- '\\n' + message.content }}\n"
    "        {%- endif %}\n"
    "        {%- for tool_call in message.tool_calls %}\n"
    "            {%- if tool_call.function is defined %}\n"
    "                {%- set tool_call = tool_call.function %}\n"
    "            {%- endif %}\n"
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n'
    "            {{- tool_call.name }}\n"
    '            {{- \'", "arguments": \' }}\n'
    "            {{- tool_call.arguments | tojson }}\n"
    "            {{- '}\\n</tool_call>' }}\n"
    "        {%- endfor %}\n"
    "        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n"
    "        {%- endif %}\n"
    "        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n"
    "        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n"
    "        {%- endif %}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

# Meta-Llama-3-8B-Instruct's published template.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim "
    "+ '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CORPUS = [
    "You are a helpful assistant. Tom has 12 apples and gives 5 to Ann.",
    "How many apples are left? 12 - 5 = 7. The answer is 7.",
    "Le café est très bon, déjà vu à Zürich. Ça coûte 3,50 €.",
    "日本語のテキストと中文文本。 Emoji: 🙂🚀👩‍💻 done.",
    "def f(x):\n    return x * 2\n\n\nprint(f(21))",
] * 20

CONVERSATIONS = [
    [{"role": "user", "content": "Hello, how many apples?"}],
    [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Le café?"},
        {"role": "assistant", "content": "  Très bon 🙂  "},
        {"role": "user", "content": "12 - 5 = ?"},
    ],
]


def byte_level_bpe(specials, post_processor=None):
    tok = Backend(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if post_processor is not None:
        tok.post_processor = post_processor(tok)
    return tok


def write_dir(path, backend, config, generation_config=None):
    path.mkdir(parents=True, exist_ok=True)
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config))
    return path


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    backend = byte_level_bpe(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": {"content": "<|im_end|>", "special": True, "__type": "AddedToken"},
        "pad_token": "<|endoftext|>",
        "chat_template": QWEN25_TEMPLATE,
    }
    eos = [backend.token_to_id("<|im_end|>"), backend.token_to_id("<|endoftext|>")]
    return write_dir(tmp_path_factory.mktemp("qwen"), backend, config, {"eos_token_id": eos})


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]

    def bos_first(tok):
        bos = "<|begin_of_text|>"
        return processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, tok.token_to_id(bos))]
        )

    backend = byte_level_bpe(specials, bos_first)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "chat_template": LLAMA3_TEMPLATE,
    }
    eos = [backend.token_to_id("<|end_of_text|>"), backend.token_to_id("<|eot_id|>")]
    return write_dir(tmp_path_factory.mktemp("llama"), backend, config, {"eos_token_id": eos})


def hf_chat_ids(hf, messages, **kw):
    out = hf.apply_chat_template(messages, tokenize=True, **kw)
    return list(out if isinstance(out, list) else out["input_ids"])  # transformers 5 returns a BatchEncoding


@pytest.mark.parametrize("which", ["qwen", "llama"])
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_chat_template_matches_transformers(which, generation_prompt, qwen_dir, llama_dir):
    transformers = pytest.importorskip("transformers")
    path = qwen_dir if which == "qwen" else llama_dir
    hf = transformers.AutoTokenizer.from_pretrained(path)
    tok = Tokenizer.from_dir(path)
    for messages in CONVERSATIONS:
        ours = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt)
        assert ours == hf_chat_ids(hf, messages, add_generation_prompt=generation_prompt)
        text = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
        assert text == hf.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False)
    if which == "qwen":
        assert "You are Qwen, created by Alibaba Cloud." in tok.render_chat(CONVERSATIONS[0])
        assert tok.decode(ours).endswith("<|im_start|>assistant\n" if generation_prompt else "<|im_end|>\n")
    else:  # BOS comes once, from the template, not again from the post-processor
        assert ours.count(tok.bos_token_id) == 1 and ours[0] == tok.bos_token_id


def test_tools_render_like_transformers(qwen_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(qwen_dir)
    tools = [{"type": "function", "function": {"name": "prix", "description": "coût en € <b>", "parameters": {}}}]
    messages = [{"role": "user", "content": "Prix?"}]
    ours = Tokenizer.from_dir(qwen_dir).render_chat(messages, tools=tools, add_generation_prompt=True)
    assert "coût en € <b>" in ours  # transformers' tojson: no ASCII or HTML escaping
    assert ours == hf.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)


@pytest.mark.parametrize("which", ["qwen", "llama"])
def test_encode_decode_match_transformers(which, qwen_dir, llama_dir):
    transformers = pytest.importorskip("transformers")
    path = qwen_dir if which == "qwen" else llama_dir
    hf = transformers.AutoTokenizer.from_pretrained(path)
    tok = Tokenizer.from_dir(path)
    texts = ["Tom has 12 apples.", " Très bon 🙂 日本語", "<|eot_id|>x<|im_end|>"]
    for text in texts:
        assert tok.encode(text, add_special_tokens=True) == hf(text)["input_ids"]
        assert tok.encode(text) == hf(text, add_special_tokens=False)["input_ids"]
    assert tok.encode_batch(texts, add_special_tokens=True) == hf(texts)["input_ids"]
    ids = tok.encode(texts[2] + texts[1], add_special_tokens=True)
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert tok.decode_batch([ids, ids[:3]]) == hf.batch_decode([ids, ids[:3]])
    assert tok.vocab_size == len(hf)
    assert (tok.bos_token_id, tok.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    if which == "llama":
        assert tok.encode("hi", add_special_tokens=True)[0] == tok.token_to_id("<|begin_of_text|>")


def test_special_ids(qwen_dir, llama_dir):
    qwen, llama = Tokenizer.from_dir(qwen_dir), Tokenizer.from_dir(llama_dir)
    assert qwen.bos_token_id is None
    assert qwen.eos_token_id == qwen.token_to_id("<|im_end|>")  # eos given as an AddedToken dict
    assert qwen.pad_token_id == qwen.token_to_id("<|endoftext|>")
    assert qwen.eos_token_ids == {qwen.token_to_id("<|im_end|>"), qwen.token_to_id("<|endoftext|>")}
    # Llama 3 declares <|end_of_text|>; the chat turn ends with <|eot_id|> (template and generation_config).
    assert llama.eos_token_ids == {llama.token_to_id("<|end_of_text|>"), llama.token_to_id("<|eot_id|>")}
    assert llama.pad_token_id == llama.eos_token_id  # no pad token: fall back to eos
    (llama_dir.parent / "no_gen").mkdir(exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (llama_dir.parent / "no_gen" / name).write_bytes((llama_dir / name).read_bytes())
    assert Tokenizer.from_dir(llama_dir.parent / "no_gen").eos_token_ids == llama.eos_token_ids  # from the template
    assert qwen.has_chat_template and llama.has_chat_template


def test_template_files_and_named_templates(tmp_path):
    backend = byte_level_bpe(["<|im_start|>", "<|im_end|>"])
    d = write_dir(
        tmp_path / "named",
        backend,
        {
            "eos_token": "<|im_end|>",
            "chat_template": [
                {"name": "default", "template": "{% for m in messages %}D:{{ m.content }}{% endfor %}"},
                {"name": "tool_use", "template": "{% for m in messages %}T:{{ m.content }}{% endfor %}"},
            ],
        },
    )
    tok = Tokenizer.from_dir(d)
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.render_chat(msgs) == "D:hi"
    assert tok.render_chat(msgs, tools=[{"name": "f"}]) == "T:hi"
    assert tok.render_chat(msgs, chat_template="tool_use") == "T:hi"
    tok.save(tmp_path / "saved")  # the list form survives a round trip
    assert Tokenizer.from_dir(tmp_path / "saved").render_chat(msgs, chat_template="tool_use") == "T:hi"
    # transformers 5 writes chat_template.jinja; it wins over tokenizer_config.json.
    (d / "chat_template.jinja").write_text("J:{{ messages[0].content }}")
    assert Tokenizer.from_dir(d).render_chat(msgs) == "J:hi"


def test_add_bos_token_without_post_processor(tmp_path):
    backend = byte_level_bpe(["<s>", "</s>"])
    d = write_dir(tmp_path / "t", backend, {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True})
    tok = Tokenizer.from_dir(d)
    bos = tok.token_to_id("<s>")
    assert tok.encode("hi", add_special_tokens=True) == [bos] + tok.encode("hi")


def test_errors(tmp_path):
    with pytest.raises(SrlmError, match=f"no tokenizer.json in {tmp_path}"):
        Tokenizer.from_dir(tmp_path)
    backend = byte_level_bpe(["<|im_end|>"])
    d = write_dir(tmp_path / "bad", backend, {})
    (d / "tokenizer_config.json").write_text('{\n  "eos_token": "<|im_end|>",\n  "pad_token": <|endoftext|>\n}\n')
    with pytest.raises(SrlmError, match=r"tokenizer_config.json:3:\d+: not valid JSON"):
        Tokenizer.from_dir(d)
    (d / "tokenizer_config.json").write_text("{}")
    with pytest.raises(SrlmError, match=r"no chat template in .*tokenizer_config.json"):
        Tokenizer.from_dir(d).apply_chat_template([{"role": "user", "content": "x"}])
    strict = (
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok"
    )
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": strict}))
    tok = Tokenizer.from_dir(d)
    assert tok.render_chat([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(SrlmError, match="Conversation must start with user"):
        tok.render_chat([{"role": "assistant", "content": "x"}])
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "line one\n{% if %}"}))
    with pytest.raises(SrlmError, match="line 2"):
        Tokenizer.from_dir(d).render_chat([{"role": "user", "content": "x"}])


STREAM_TEXT = "Héllo wörld! 日本語のテキスト 🙂🚀 a  b\n  Ça coûte 3,50 € 👩‍💻 end"


def stream(tok, ids, **kw):
    dec = tok.stream_decoder(**kw)
    deltas = [dec.push(i) for i in ids]
    return deltas, dec.flush()


def test_stream_decoder_byte_level_unicode():
    tok = train_bpe(CORPUS, 300)  # small vocabulary: emoji and CJK split into several byte tokens
    ids = tok.encode(STREAM_TEXT)
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) + tail == tok.decode(ids) == STREAM_TEXT
    assert tail == ""
    assert not any("\ufffd" in d for d in deltas)
    assert deltas.count("") > 0  # some characters did span several tokens and were held back
    # Naively decoding token by token would break the multi-byte characters.
    assert "".join(tok.decode([i]) for i in ids) != STREAM_TEXT


def test_stream_decoder_keeps_leading_spaces_with_metaspace():
    # SentencePiece-style: decoding a lone "▁world" drops its space; the prefix window keeps it.
    backend = Backend(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>"], show_progress=False)
    backend.train_from_iterator(["hello world how are you today"] * 10, trainer=trainer)
    tok = Tokenizer(backend)
    ids = tok.encode("hello world how are you")
    assert tok.decode(ids[1:2]) == tok.decode(ids[1:2]).lstrip()  # a lone token loses its space
    deltas, tail = stream(tok, ids)
    assert "".join(deltas) + tail == "hello world how are you"
    # With prompt context, the first generated token keeps its leading space too.
    deltas, tail = stream(tok, ids[2:], prompt_ids=ids[:2])
    assert "".join(deltas) + tail == " how are you"


def test_stream_decoder_flushes_incomplete_bytes():
    tok = train_bpe(CORPUS, 300)
    ids = tok.encode("ok 🙂")
    dec = StreamDecoder(tok)
    out = "".join(dec.push(i) for i in ids[:-1])  # stop in the middle of the emoji
    assert "\ufffd" not in out
    assert out + dec.flush() == tok.decode(ids[:-1])


def test_train_bpe_digits_chat_and_transformers(tmp_path):
    tok = train_bpe(CORPUS, 420)
    assert tok.vocab_size <= 420
    for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"):
        assert tok.token_to_id(t) is not None
        assert tok.encode(t) == [tok.token_to_id(t)]
    digits = tok.encode("12345 + 678")
    pieces = [tok.decode([i]) for i in digits]
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("12345678")  # one digit per token
    assert "".join(pieces) == "12345 + 678"
    assert tok.eos_token_id == tok.token_to_id("<|im_end|>")
    assert tok.pad_token_id == tok.token_to_id("<|endoftext|>")
    reasoning = "<think>12 - 5 = 7</think>The answer is 7."
    assert tok.decode(tok.encode(reasoning), skip_special_tokens=True) == reasoning  # think tags are not special

    tok.save(tmp_path)
    again = Tokenizer.from_dir(tmp_path)
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "12 - 5?"},
        {"role": "assistant", "content": reasoning},
    ]
    for gen in (False, True):
        msgs = chat[1:2] if gen else chat
        assert again.apply_chat_template(msgs, add_generation_prompt=gen) == tok.apply_chat_template(
            msgs, add_generation_prompt=gen
        )
    assert (
        again.render_chat(chat[1:2], add_generation_prompt=True)
        == "<|im_start|>user\n12 - 5?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert again.eos_token_ids == {tok.token_to_id("<|im_end|>")}

    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for gen, msgs in ((False, chat), (True, chat[:2]), (True, chat[1:2])):
        assert hf_chat_ids(hf, msgs, add_generation_prompt=gen) == again.apply_chat_template(
            msgs, add_generation_prompt=gen
        )
    assert hf(STREAM_TEXT)["input_ids"] == again.encode(STREAM_TEXT, add_special_tokens=True)
    assert (hf.eos_token, hf.pad_token, len(hf)) == ("<|im_end|>", "<|endoftext|>", again.vocab_size)


def test_cli_train_text_and_jsonl(tmp_path, capsys):
    import argparse

    (tmp_path / "a.txt").write_text("\n".join(CORPUS[:5]) + "\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in CORPUS[:5]) + "\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "train",
            "--files",
            str(tmp_path / "a.txt"),
            str(tmp_path / "b.jsonl"),
            "--vocab-size",
            "300",
            "--out",
            str(tmp_path / "tok"),
        ]
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    tok = Tokenizer.from_dir(tmp_path / "tok")
    assert f"vocab size {tok.vocab_size}" in out and "ids: [" in out
    assert tok.has_chat_template

    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "oops"}\n')
    bad = Namespace(
        action="train",
        files=[str(tmp_path / "bad.jsonl")],
        vocab_size=300,
        min_frequency=2,
        out=str(tmp_path / "x"),
        sample="x",
    )
    with pytest.raises(SrlmError, match=r"bad.jsonl:2: expected an object with a string \"text\" field"):
        main(bad)


def test_jinja_environment_matches_transformers(qwen_dir, tmp_path):
    # Block tags on their own lines (trim_blocks/lstrip_blocks), {% break %}, strftime_now, namespace.
    template = (
        "{% set ns = namespace(n=0) %}\n"
        "{% for message in messages %}\n"
        "    {% if loop.index > 2 %}{% break %}{% endif %}\n"
        "    {% set ns.n = ns.n + 1 %}\n"
        "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}\n"
        "{% endfor %}\n"
        "{{ ns.n }} {{ strftime_now('%Y') }} {{ eos_token }}|{{ pad_token }}|{{ bos_token }}\n"
        "{% if add_generation_prompt %}\n"
        "{{ '<|im_start|>assistant\\n' }}\n"
        "{% endif %}\n"
    )
    transformers = pytest.importorskip("transformers")
    d = tmp_path / "t"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (d / name).write_bytes((qwen_dir / name).read_bytes())
    (d / "chat_template.jinja").write_text(template)
    hf = transformers.AutoTokenizer.from_pretrained(d)
    tok = Tokenizer.from_dir(d)
    messages = CONVERSATIONS[1]
    text = tok.render_chat(messages, add_generation_prompt=True)
    assert text == hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.count("<|im_start|>") == 3 and "\n2 " in text and "<|im_end|>|<|endoftext|>|\n" in text
    assert tok.apply_chat_template(messages, add_generation_prompt=True) == hf_chat_ids(
        hf, messages, add_generation_prompt=True
    )


def test_token_bytes_rebuild_the_text_even_inside_a_character():
    tok = train_bpe(["héllo wörld, 日本語 ✓ naïve café 🙂 and more"] * 20, vocab_size=300)
    text = "日本語 🙂 ✓ naïve, plain"
    ids = tok.encode(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens hold part of a character
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert tok.token_bytes(tok.token_to_id("<|im_end|>")) == b"<|im_end|>"
