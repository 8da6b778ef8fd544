"""Prompts as `transformers` encodes them: chat templates and the BOS rule, id for id.

The fixture tokenizers (tests/fixtures/make_tokenizers.py) are Llama-3.1-Instruct
and Qwen2.5-Instruct look-alikes in the real file formats, with the families'
chat templates; `transformers.AutoTokenizer` loads the same directories.
"""

import dataclasses
import json
import os
import shutil

import pytest
import transformers

from ram_jax.data import chat_template, templates
from ram_jax.models.tokenizer import build_tokenizer, load_tokenizer, prompt_bos_id
from ram_jax.models.tokenizer_config import load_tokenizer_config

TOKENIZERS = os.path.join(os.path.dirname(__file__), "fixtures", "tokenizers")
FAMILIES = ("llama3-instruct", "qwen2.5-instruct")
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "  You answer in one word.  "},
        {"role": "user", "content": "Capital of Japan?\n\n"},
    ],
    [
        {"role": "user", "content": "Hello there!"},
        {"role": "assistant", "content": "Hi, how can I help you today?"},
        {"role": "user", "content": "Numbers 12345, café, 日本語 🙂 and\ttabs", "name": None},
    ],
    # Special-token strings inside user text are encoded as those tokens, as HF does.
    [{"role": "user", "content": "say <|im_end|> or <|eot_id|> please"}],
]
TEXTS = ["Hello there! 12345 café", "\n\nHuman: What is 2+2?\n\nAssistant: ", " leading"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    path = os.path.join(TOKENIZERS, request.param)
    tok = load_tokenizer(path)
    return (
        path,
        tok,
        load_tokenizer_config(path, tok),
        transformers.AutoTokenizer.from_pretrained(path),
    )


def _encode(tok, tc, prompts, template="chat", bos_id=None, max_length=None):
    return templates.encode_prompts(
        tok,
        prompts,
        template,
        bos_id=bos_id,
        max_length=max_length,
        chat_template=tc.chat_template,
        special_tokens=tc.special_tokens,
    )


def test_chat_prompts_equal_apply_chat_template(family):
    _, tok, tc, hf = family
    for conversation in CONVERSATIONS:
        want_text = hf.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        got_text = templates.render("chat", conversation, **_chat(tc))
        assert got_text == want_text
        want = hf.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False)
        assert _encode(tok, tc, [conversation]) == [want]
    # A prompt string is one user message; no BOS is added twice (Llama's template writes one).
    want = hf.apply_chat_template(CONVERSATIONS[0], add_generation_prompt=True, return_dict=False)
    text = CONVERSATIONS[0][0]["content"]
    bos = prompt_bos_id(tok, tc, None, "chat")
    assert bos is None and _encode(tok, tc, [text]) == [want]
    forced = prompt_bos_id(tok, tc, True, "chat") if tc.bos_token else None
    assert _encode(tok, tc, [text], bos_id=forced) == [want]
    # Cut to its end, a prompt keeps the template's BOS first.
    if tc.bos_token:
        assert _encode(tok, tc, [text], max_length=5) == [[want[0]] + want[-4:]]


def _chat(tc):
    return dict(chat_template=tc.chat_template, special_tokens=tc.special_tokens)


def test_bos_as_transformers_adds_it(family, tmp_path):
    path, tok, tc, hf = family
    bos = prompt_bos_id(tok, tc, None, "raw")  # Llama-3: the post-processor's BOS
    assert (bos is not None) == (tc.bos_token is not None)
    assert _encode(tok, tc, TEXTS, "raw", bos) == hf(TEXTS)["input_ids"]
    off = prompt_bos_id(tok, tc, False, "raw")
    assert _encode(tok, tc, TEXTS, "raw", off) == hf(TEXTS, add_special_tokens=False)["input_ids"]
    # transformers ignores add_bos_token in tokenizer_config.json here: the post-processor rules.
    copy = tmp_path / "explicit"
    shutil.copytree(path, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    explicit = not bool(tc.bos_token)  # Llama: false; Qwen: true
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": explicit}))
    tc2 = load_tokenizer_config(str(copy), tok)
    hf2 = transformers.AutoTokenizer.from_pretrained(str(copy))
    assert (
        _encode(tok, tc2, TEXTS, "raw", prompt_bos_id(tok, tc2, None, "raw"))
        == hf2(TEXTS)["input_ids"]
    )


def test_bos_of_a_locally_built_tokenizer_and_a_forced_one():
    tok = build_tokenizer(TEXTS * 10, 300, special_tokens=("<|endoftext|>", "<|begin_of_text|>"))
    tc = load_tokenizer_config("in-memory.json", tok)  # no files: inferred from the vocabulary
    assert tc.eos_token == "<|endoftext|>" and tc.bos_token == "<|begin_of_text|>"
    assert prompt_bos_id(tok, tc, None, "raw") is None  # no post-processor: none, as HF
    assert prompt_bos_id(tok, tc, True, "raw") == 1
    qwen = load_tokenizer(os.path.join(TOKENIZERS, "qwen2.5-base"))
    qwen_tc = load_tokenizer_config(os.path.join(TOKENIZERS, "qwen2.5-base"), qwen)
    with pytest.raises(ValueError, match="turn add_bos off"):
        prompt_bos_id(qwen, qwen_tc, True, "raw")


def test_template_errors_are_clear(tmp_path):
    tok = load_tokenizer(os.path.join(TOKENIZERS, "qwen2.5-base"))
    no_chat = dataclasses.replace(
        load_tokenizer_config(os.path.join(TOKENIZERS, "qwen2.5-base"), tok), chat_template=None
    )
    with pytest.raises(ValueError, match="template 'chat' needs the tokenizer's chat template"):
        _encode(tok, no_chat, ["hi"])
    with pytest.raises(ValueError, match="only be a prompt under the 'chat' template"):
        templates.encode_prompts(tok, [CONVERSATIONS[0]], "human_assistant")
    strict = "{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}"
    strict += "{% endif %}{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}"
    assert chat_template.render(strict, [{"role": "user", "content": "a"}]) == "a"
    with pytest.raises(ValueError, match="refused the conversation: no tools"):
        chat_template.render(strict, [{"role": "tool", "content": "a"}])
    with pytest.raises(ValueError, match="message 0 must be an object with a string 'role'"):
        chat_template.render(strict, [{"content": "a"}])
    sandbox = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(Exception, match="unsafe|__class__"):
        chat_template.render(sandbox, [{"role": "user", "content": "a"}])
