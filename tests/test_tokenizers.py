"""CLIP and XLM-R tokenizers: exact ids / masks / untruncated lengths vs golden/tokenizers.npz, both load paths."""
from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from kandinsky_cli.errors import ModelError, UserError
from kandinsky_cli.tokenizer import load_clip_tokenizer, load_xlmr_tokenizer

TOKENIZERS = {
    "clip": ("prior/tokenizer", load_clip_tokenizer, "vocab.json+merges.txt"),
    "xlmr": ("inpaint/tokenizer", load_xlmr_tokenizer, "sentencepiece.bpe.model"),
}

# Special-token strings inside the text, odd whitespace, NFKC-sensitive and unseen characters.
EXTRA_TEXTS = [
    "a <s> b</s>c<mask> d <pad><unk>", "<mask>", " <s> ", "x<|endoftext|>y <|startoftext|>z",
    "``quoted'' text", "\uff41\uff42\uff43\u3000full width \u2460", "tab\tnew\nline\r\n end", "   ", "",
    "\u6771\u4eac \U0001f431", "e\u0301t\u00e9 CAF\u00c9", "x" * 300,
]


def _copy_without_tokenizer_json(fixture_dir, folder, tmp_path):
    dst = tmp_path / folder.replace("/", "_")
    shutil.copytree(fixture_dir / folder, dst)
    (dst / "tokenizer.json").unlink()
    return dst


def _load(name, path, fixture_dir, tmp_path):
    folder, loader, fallback_source = TOKENIZERS[name]
    if path == "tokenizer.json":
        tok = loader(fixture_dir / folder)
        assert tok.source == "tokenizer.json"
    else:
        tok = loader(_copy_without_tokenizer_json(fixture_dir, folder, tmp_path))
        assert tok.source == fallback_source
    return tok


@pytest.mark.parametrize("path", ["tokenizer.json", "fallback"])
@pytest.mark.parametrize("name", ["clip", "xlmr"])
def test_ids_match_golden(name, path, fixture_dir, tmp_path, golden, cases):
    gold = golden("tokenizers")
    prompts = cases["tokenizers"]["prompts"]
    tok = _load(name, path, fixture_dir, tmp_path)
    ids, mask = tok(prompts, max_length=77)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    assert ids.shape == mask.shape == (len(prompts), 77)
    np.testing.assert_array_equal(ids, gold[f"{name}/input_ids"])
    np.testing.assert_array_equal(mask, gold[f"{name}/attention_mask"])
    np.testing.assert_array_equal(tok.untruncated_lengths(prompts), gold[f"{name}/untruncated_len"])


@pytest.mark.parametrize("name", ["clip", "xlmr"])
def test_fallback_equals_tokenizer_json_on_other_texts(name, fixture_dir, tmp_path):
    main = _load(name, "tokenizer.json", fixture_dir, tmp_path)
    fallback = _load(name, "fallback", fixture_dir, tmp_path)
    for text in EXTRA_TEXTS:
        assert fallback.encode(text) == main.encode(text), repr(text)
    for max_length in (2, 5, 77):
        for a, b in zip(main(EXTRA_TEXTS, max_length), fallback(EXTRA_TEXTS, max_length)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(main.untruncated_lengths(EXTRA_TEXTS), fallback.untruncated_lengths(EXTRA_TEXTS))


@pytest.mark.parametrize("path", ["tokenizer.json", "fallback"])
@pytest.mark.parametrize("name", ["clip", "xlmr"])
def test_truncation_keeps_bos_and_eos(name, path, fixture_dir, tmp_path, cases):
    prompts = cases["tokenizers"]["prompts"]
    tok = _load(name, path, fixture_dir, tmp_path)
    full = [tok.encode(p) for p in prompts]
    lengths = tok.untruncated_lengths(prompts)
    assert [len(f) for f in full] == lengths.tolist()
    ids, mask = tok(prompts, max_length=8)
    for row, m, f in zip(ids, mask, full):
        n = int(m.sum())
        assert n == min(len(f), 8)
        assert row[:n].tolist() == (f if len(f) <= 8 else f[:7] + f[-1:])
        assert (row[n:] == tok.pad_token_id).all() and (m[n:] == 0).all() and (m[:n] == 1).all()
    # a single string is a batch of one
    np.testing.assert_array_equal(tok(prompts[2])[0], tok([prompts[2]])[0])


def test_clip_fallback_rebuilds_tokenizer_json(fixture_dir, tmp_path):
    """The vocab/merges build serialises to the very same pipeline as the shipped tokenizer.json."""
    built = json.loads(_load("clip", "fallback", fixture_dir, tmp_path).tokenizer.to_str())
    shipped = json.loads((fixture_dir / "prior/tokenizer/tokenizer.json").read_text(encoding="utf-8"))
    for key in ("normalizer", "pre_tokenizer", "post_processor", "decoder", "model", "added_tokens"):
        assert built[key] == shipped[key], key


def test_missing_files_are_user_errors(fixture_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="vocab.json"):
        load_clip_tokenizer(empty)
    with pytest.raises(UserError, match="sentencepiece.bpe.model"):
        load_xlmr_tokenizer(empty)
    with pytest.raises(UserError, match="does not exist"):
        load_clip_tokenizer(tmp_path / "nope")


def test_sentencepiece_missing_is_a_clear_user_error(fixture_dir, tmp_path, monkeypatch):
    folder = _copy_without_tokenizer_json(fixture_dir, "inpaint/tokenizer", tmp_path)
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # makes `import sentencepiece` raise ImportError
    with pytest.raises(UserError, match="pip install sentencepiece"):
        load_xlmr_tokenizer(folder)
    # with tokenizer.json present, sentencepiece is not needed
    assert load_xlmr_tokenizer(fixture_dir / "inpaint/tokenizer").source == "tokenizer.json"


@pytest.mark.parametrize("name,path,file,content,problem", [
    ("clip", "tokenizer.json", "tokenizer.json", '{"model": ', r"cannot read tokenizer .*tokenizer\.json"),
    ("xlmr", "tokenizer.json", "tokenizer.json", "not json", r"cannot read tokenizer .*tokenizer\.json"),
    ("clip", "tokenizer.json", "tokenizer_config.json", "{", r"cannot read .*tokenizer_config\.json"),
    ("clip", "fallback", "tokenizer_config.json", "[]", r"tokenizer_config\.json: must be a JSON object"),
    ("xlmr", "tokenizer.json", "special_tokens_map.json", "3", r"special_tokens_map\.json: must be a JSON object"),
    ("clip", "fallback", "vocab.json", "{", r"cannot read CLIP vocabulary .*vocab\.json"),
    ("clip", "fallback", "vocab.json", '{"a": 0}', r"vocab\.json: special token '<\|startoftext\|>' is not in"),
    ("clip", "fallback", "merges.txt", "#version: 0.2\na\n", r"merges\.txt"),
    ("xlmr", "fallback", "sentencepiece.bpe.model", "junk", r"cannot read sentencepiece model .*bpe\.model"),
])
def test_unreadable_tokenizer_files_are_model_errors(name, path, file, content, problem, fixture_dir, tmp_path):
    folder, loader, _ = TOKENIZERS[name]
    if path == "tokenizer.json":
        folder = shutil.copytree(fixture_dir / folder, tmp_path / "tokenizer")
    else:
        folder = _copy_without_tokenizer_json(fixture_dir, folder, tmp_path)
    (folder / file).write_text(content, encoding="utf-8")
    with pytest.raises(ModelError, match=problem):
        loader(folder)
