"""Rows, tokenization and batching: exact layouts, determinism, resumption, clear errors."""

import json
import os

import numpy as np
import pytest

from ram_jax import data
from ram_jax.data.pipeline import bucket_length
from ram_jax.models.tokenizer import load_tokenizer
from ram_jax.training.losses import Objective

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TRAIN = os.path.join(FIXTURES, "smoke_train.jsonl")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(os.path.join(FIXTURES, "tokenizer.json"))


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_reads_rows_with_k_samples():
    rows = data.read_rows(TRAIN, need=("sampling",))
    assert len(rows) == 256
    first = json.loads(open(TRAIN).readline())
    assert rows[0].prompt == first["prompt"] and rows[0].chosen == first["chosen"]
    assert rows[0].sampling == tuple(first["sampling"]) and len(rows[0].sampling) == 2
    assert rows[0].where == f"{TRAIN}:1"


def test_hh_rows_split_at_the_last_assistant_turn():
    rows = data.read_rows(os.path.join(FIXTURES, "hh.jsonl"), need=("rejected",))
    lines = [json.loads(x) for x in open(os.path.join(FIXTURES, "hh.jsonl"))]
    for row, raw in zip(rows, lines, strict=True):
        assert row.prompt.endswith("\n\nAssistant: ")
        assert row.prompt + row.chosen == raw["chosen"]
        assert row.prompt + row.rejected == raw["rejected"]
    multi = rows[1]  # the odd rows have an earlier exchange, which stays in the prompt
    assert multi.prompt.startswith("\n\nHuman: hello 1\n\nAssistant: hi there\n\nHuman:")
    assert multi.chosen.startswith("Thank you")


# A helpful-base training row in the published format (a benign one, shortened).
HH_ROW = {
    "chosen": "\n\nHuman: Can you tell me how to make a cup of tea?\n\nAssistant: Sure! Do "
    "you want black or green tea?\n\nHuman: Black, please.\n\nAssistant: Boil water, pour "
    "it over the tea bag, and let it steep for three to five minutes.\n\nEnjoy!",
    "rejected": "\n\nHuman: Can you tell me how to make a cup of tea?\n\nAssistant: Sure! "
    "Do you want black or green tea?\n\nHuman: Black, please.\n\nAssistant:  I don't know.",
}


@pytest.mark.parametrize("family", ["llama3-instruct", "qwen2.5-base"])
def test_hh_boundary_as_the_reference(family, tmp_path):
    """The space after the last "Assistant:" is the prompt's last token, as the reference
    splits (at "\\n\\nAssistant: "); the responses start without it."""
    path = _write(tmp_path, "hh.jsonl", json.dumps(HH_ROW) + "\n")
    (row,) = data.read_rows(path, need=("rejected",))
    cut = HH_ROW["chosen"].rindex("\n\nAssistant: ") + len("\n\nAssistant: ")
    assert row.prompt == HH_ROW["chosen"][:cut] and row.chosen == HH_ROW["chosen"][cut:]
    assert row.chosen.startswith("Boil") and row.rejected == " I don't know."
    tok = load_tokenizer(os.path.join(FIXTURES, "tokenizers", family))
    examples = data.tokenize_rows(
        [row],
        tok,
        Objective("ram_sft"),
        eos_id=0,
        max_length=128,
        max_prompt_length=96,
        negatives="rejected",
    )
    n = int(examples.prompt_lengths[0])
    chosen = examples.sequences[0][0]
    assert list(chosen[:n]) == tok.encode(row.prompt, add_special_tokens=False).ids
    assert tok.decode([int(chosen[n - 1])]) == " "  # the boundary token: the space alone
    assert tok.decode([int(chosen[n])]).startswith("B")  # no space before the response


def test_json_array_files(tmp_path):
    path = _write(tmp_path, "rows.json", json.dumps([{"prompt": "a", "chosen": "b"}]))
    assert data.read_rows(path)[0].chosen == "b"


@pytest.mark.parametrize(
    "text, need, message",
    [
        ('{"prompt": "a", "chosen": "b"}\n{"prompt": "c"}\n', (), r"bad\.jsonl:2: .*'chosen'"),
        ('{"prompt": "a", "chosen": "b"}\n{oops\n', (), r"bad\.jsonl:2: invalid JSON"),
        ('{"prompt": "a", "chosen": "b"}\n', ("sampling",), r"bad\.jsonl:1: .*sample_proposal"),
        ('{"prompt": "a", "chosen": "b"}\n', ("rejected",), r"bad\.jsonl:1: .*'rejected'"),
        ('{"prompt": "a", "chosen": 3}\n', (), r"bad\.jsonl:1: field 'chosen' must be a string"),
        ('{"prompt": "a", "chosen": "b", "sampling": [1]}\n', (), r":1: 'sampling' must be"),
        ("[1, 2]\n", (), r"must be a JSON object"),
        ('{"chosen": "no turns", "rejected": "x"}\n', (), r":1 \(chosen\): HH conversation has no"),
        ("\n\n", (), r"holds no rows; the dataset is empty"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, text, need, message):
    path = _write(tmp_path, "bad.jsonl", text)
    with pytest.raises(data.DataError, match=message):
        data.read_rows(path, need=need)


def test_hh_pairs_with_different_prompts_are_dropped_and_counted(tmp_path, caplog):
    good = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}
    bad = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: b"}
    path = _write(tmp_path, "hh.jsonl", "".join(json.dumps(r) + "\n" for r in (bad, good, bad)))
    with caplog.at_level("WARNING"):
        rows = data.read_rows(path)
    assert [(r.chosen, r.rejected, r.where.endswith(":2")) for r in rows] == [("b", "c", True)]
    assert "dropped 2 HH pair(s)" in caplog.text and "hh.jsonl:1: HH 'chosen'" in caplog.text
    # The dataset builder reads HH files through the same rule.
    from ram_jax.datasets import hh_rlhf

    stats = {}
    assert len(list(hh_rlhf.read_pairs(path, stats))) == 1 and stats["mismatched_prompts"] == 2
    with pytest.raises(data.DataError, match="the dataset is empty"):
        data.read_rows(_write(tmp_path, "only_bad.jsonl", json.dumps(bad) + "\n"))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match="data file not found"):
        data.read_rows(str(tmp_path / "nope.jsonl"))


def test_tokenize_truncates_prompt_left_and_appends_eos(tok):
    row = data.Row(prompt="one two three four five six", chosen=" seven eight", sampling=(" x",))
    prompt_ids = tok.encode(row.prompt, add_special_tokens=False).ids
    chosen_ids = tok.encode(row.chosen, add_special_tokens=False).ids
    ex = data.tokenize_rows(
        [row], tok, Objective("ram_sft"), eos_id=0, max_length=64, max_prompt_length=4
    )
    seq = ex.sequences[0][0]
    assert ex.prompt_lengths[0] == 4
    assert list(seq[:4]) == prompt_ids[-4:]  # the end of the prompt is kept
    assert list(seq[4:]) == chosen_ids + [0]
    sample = ex.sequences[0][1]
    assert list(sample[:4]) == prompt_ids[-4:] and sample[-1] == 0
    # The response is cut so the whole sequence fits max_length (EOS cut with it).
    short = data.tokenize_rows(
        [row], tok, Objective("sft"), eos_id=0, max_length=5, max_prompt_length=4
    )
    assert list(short.sequences[0][0]) == prompt_ids[-4:] + chosen_ids[:1]


def test_prompt_template_and_negatives(tok):
    row = data.Row(prompt="hi", chosen="a", rejected="b", sampling=("c", "d"))
    kw = dict(eos_id=0, max_length=32, max_prompt_length=16)
    ex = data.tokenize_rows(
        [row],
        tok,
        Objective("ram_sft"),
        negatives="rejected",
        prompt_template="Q: {prompt}\n",
        **kw,
    )
    p = tok.encode("Q: hi\n", add_special_tokens=False).ids
    assert list(ex.sequences[0][1]) == p + tok.encode("b", add_special_tokens=False).ids + [0]
    mc = data.tokenize_rows([row], tok, Objective("ram_mc", num_samples=2), **kw)
    assert mc.group_size == 3
    with pytest.raises(data.DataError, match="needs 3 proposal sample"):
        data.tokenize_rows([row], tok, Objective("ram_mc", num_samples=3), **kw)


def test_prompts_encode_alike_everywhere_with_bos_kept_first(tok):
    from ram_jax.data import templates

    text = "one two three four five six seven"
    ids = tok.encode(templates.apply("human_assistant", text), add_special_tokens=False).ids
    assert templates.encode_prompts(tok, [text], "human_assistant") == [ids]
    # Left truncation keeps the end; the BOS stays first.
    assert templates.encode_prompts(tok, [text], "human_assistant", bos_id=7, max_length=5) == [
        [7] + ids[-4:]
    ]
    # Training uses the same encoding (names and {prompt} strings alike).
    row = data.Row(prompt=text, chosen="a")
    ex = data.tokenize_rows(
        [row],
        tok,
        Objective("sft"),
        eos_id=0,
        max_length=12,
        max_prompt_length=5,
        prompt_template="\n\nHuman: {prompt}\n\nAssistant: ",
        bos_id=7,
    )
    assert list(ex.sequences[0][0][:5]) == [7] + ids[-4:] and ex.prompt_lengths[0] == 5
    with pytest.raises(ValueError, match="neither a name"):
        templates.resolve("Q: {x}")


@pytest.fixture(scope="module")
def examples(tok):
    rows = data.read_rows(TRAIN, need=("sampling",))
    return data.tokenize_rows(
        rows, tok, Objective("ram_sft"), eos_id=0, max_length=64, max_prompt_length=32
    )


def _batches(examples, **kw):
    args = dict(batch_size=8, grad_accum=2, seed=3, bucket_min=16, max_length=64)
    return data.Batches(examples, **{**args, **kw})


def test_batch_layout_masks_and_buckets(examples):
    b = _batches(examples).batch(0, 0)
    a, rows, g, t = b["tokens"].shape
    assert (a, rows, g) == (2, 4, 2) and b["weight"].shape == (2, 4)
    ids = _batches(examples).permutation(0)[:8].reshape(2, 4)
    longest = max(len(s) for i in ids.ravel() for s in examples.sequences[i])
    assert t == bucket_length(longest, 16, 64) and t >= longest and t & (t - 1) == 0
    for ai in range(2):
        for r in range(4):
            i = ids[ai, r]
            for s, seq in enumerate(examples.sequences[i]):
                n, p = len(seq), examples.prompt_lengths[i]
                np.testing.assert_array_equal(b["tokens"][ai, r, s, :n], seq)
                assert b["mask"][ai, r, s].sum() == n and not b["mask"][ai, r, s, n:].any()
                assert np.flatnonzero(b["targets"][ai, r, s]).tolist() == list(range(p, n))
    assert (b["weight"] == 1).all()


def test_order_is_seeded_and_every_example_appears_once_per_epoch(examples):
    batches = _batches(examples, batch_size=16, grad_accum=1)
    perm0, perm1 = batches.permutation(0), batches.permutation(1)
    assert sorted(perm0) == list(range(len(examples))) and (perm0 != perm1).any()
    np.testing.assert_array_equal(perm0, _batches(examples, batch_size=16).permutation(0))
    assert (perm0 != _batches(examples, seed=4).permutation(0)).any()
    assert batches.steps_per_epoch == len(examples) // 16


def test_iterator_state_resumes_exactly(examples):
    batches = _batches(examples, batch_size=64, grad_accum=1)  # 4 steps per epoch
    it = data.DataIterator(batches)
    seen = [next(it) for _ in range(6)]  # crosses into epoch 1
    resumed = data.DataIterator(batches)
    resumed.restore({"epoch": 0, "index": 3, "seed": 3})
    for want in seen[3:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["tokens"], want["tokens"])
    assert resumed.state() == it.state() == {"epoch": 1, "index": 2, "seed": 3}
    with pytest.raises(ValueError, match="seed"):
        resumed.restore({"epoch": 0, "index": 0, "seed": 9})


def test_process_shards_tile_the_global_batch(examples):
    full = _batches(examples).batch(1, 2)
    parts = [_batches(examples, process_index=p, process_count=2).batch(1, 2) for p in range(2)]
    for key in full:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=1), full[key])


def test_batches_reject_bad_sizes(examples):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        _batches(examples, batch_size=512, grad_accum=1)
    with pytest.raises(ValueError, match="not divisible by grad_accum"):
        _batches(examples, batch_size=8, grad_accum=3)


def test_eval_batches_cover_everything_once(examples):
    seen = []
    for b in data.eval_batches(examples, 24, bucket_min=16, max_length=64):
        real = b["weight"][0] > 0
        for row in b["tokens"][0][real]:
            seen.append(tuple(row[0][row[0] != 0]))
        assert not b["mask"][0][~real].any()
    assert len(seen) == len(examples)
    first = examples.sequences[0][0]
    assert seen[0] == tuple(first[first != 0])


def test_messages_rows_train_on_the_chat_template(tmp_path):
    """UltraChat's own rows: the prompt is the conversation before the last (assistant)
    message, rendered by the checkpoint's chat template with an assistant turn opened."""
    import transformers

    from ram_jax.models.tokenizer_config import load_tokenizer_config

    conversation = [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    rows = [
        {"prompt": "Hi!", "prompt_id": "x", "messages": conversation},  # ultrachat_200k
        {"messages": conversation[2:], "sampling": "Red, I think."},
    ]
    path = _write(tmp_path, "uc.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    first, second = data.read_rows(path)
    assert first.prompt == tuple(conversation[:3]) and first.chosen == "Blue."
    assert second.prompt == tuple(conversation[2:3]) and second.sampling == ("Red, I think.",)
    directory = os.path.join(FIXTURES, "tokenizers", "qwen2.5-instruct")
    tok = load_tokenizer(directory)
    tc = load_tokenizer_config(directory, tok)
    eos = tok.token_to_id("<|im_end|>")
    examples = data.tokenize_rows(
        [first, second],
        tok,
        Objective("sft"),
        eos_id=eos,
        max_length=256,
        max_prompt_length=128,
        prompt_template="chat",
        chat_template=tc.chat_template,
        special_tokens=tc.special_tokens,
    )
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    prompt = hf.apply_chat_template(conversation[:3], add_generation_prompt=True, return_dict=False)
    # The rendered conversation with the answer equals prompt + answer + EOS, as trained.
    full = hf.apply_chat_template(conversation, return_dict=False)
    assert list(examples.sequences[0][0]) == full[: len(full) - 1]  # the template adds "\n"
    assert examples.prompt_lengths[0] == len(prompt)
    with pytest.raises(data.DataError, match=r"uc\.jsonl:1: the prompt is a conversation"):
        data.tokenize_rows(
            [first], tok, Objective("sft"), eos_id=eos, max_length=64, max_prompt_length=32
        )
    bad = _write(tmp_path, "bad.jsonl", json.dumps({"messages": conversation[:3]}) + "\n")
    with pytest.raises(data.DataError, match=r"bad\.jsonl:1: the last message must be the"):
        data.read_rows(bad)
