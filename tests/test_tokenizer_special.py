"""Special tokens typed in a prompt are matched as transformers matches them, following the folder's flags
(normalized, lstrip, rstrip, single_word) from tokenizer_config.json, special_tokens_map.json and tokenizer.json."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import FIXTURE
from kandinsky_cli.errors import ModelError
from kandinsky_cli.tokenizer import load_clip_tokenizer, load_xlmr_tokenizer

S, E = "<|startoftext|>", "<|endoftext|>"

CLIP_TEXTS = ["a <|endoftext|> b", "a <|ENDOFTEXT|> b", "<|STARTOFTEXT|> hi", "x<|endoftext|>y",
              "a  <|EndOfText|>   b"]
XLMR_TEXTS = ["a <mask> b", "a<mask>b", "ab<mask>", "a <MASK> b", "x</s>y", "x <pad> <unk> y"]


def added(content, **flags):
    """A token entry as transformers writes it: every flag false unless given."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True, **flags}


# The published prior's files mark bos/eos/unk normalized (pad is a plain string, as in openai's CLIP folders).
PUBLISHED = {key: {"__type": "AddedToken", **added(token, normalized=True)}
             for key, token in (("bos_token", S), ("eos_token", E), ("unk_token", E))}
PUBLISHED_MAP = {**{key: added(value["content"], normalized=True) for key, value in PUBLISHED.items()}, "pad_token": E}
CLIP_DECODER = {"998": added(S, normalized=True), "999": added(E, normalized=True)}

# Each variant is a copy of a fixture tokenizer folder with: tokenizer_config.json keys replaced (config), a
# special_tokens_map.json (special_map), flags changed in tokenizer.json's added_tokens (json_flags), or no
# tokenizer.json (drop_json).
VARIANTS = {
    "clip/fixture tokenizer.json": {},
    "clip/fixture vocab+merges": dict(drop_json=True),
    "clip/published vocab+merges": dict(drop_json=True, config=PUBLISHED, special_map=PUBLISHED_MAP),
    "clip/published vocab+merges+decoder": dict(drop_json=True, special_map=PUBLISHED_MAP,
                                                config={**PUBLISHED, "added_tokens_decoder": CLIP_DECODER}),
    "clip/published tokenizer.json": dict(config=PUBLISHED, special_map=PUBLISHED_MAP),
    "clip/tokenizer.json+decoder": dict(config={"added_tokens_decoder": CLIP_DECODER}),
    "clip/tokenizer.json normalized": dict(json_flags={S: {"normalized": True}, E: {"normalized": True}}),
    "clip/decoder single_word": dict(config={"added_tokens_decoder": {"999": added(E, normalized=True,
                                                                                   single_word=True)}}),
    "xlmr/fixture tokenizer.json": {},
    "xlmr/tokenizer.json single_word": dict(json_flags={"<mask>": {"single_word": True},
                                                        "</s>": {"single_word": True}}),
    "xlmr/decoder every flag": dict(config={"added_tokens_decoder": {
        "1001": added("<mask>", lstrip=True, rstrip=True, normalized=True, single_word=True)}}),
}

# Ids from transformers 5.24.0 (tokenizers 0.23.3): CLIPTokenizer / XLMRobertaTokenizer
# .from_pretrained(folder)(text)["input_ids"] on these very folders. 4.57.6 gives other ids for some of them
# (see the tokenizer module's docstring): its slow CLIPTokenizer matches CLIP special tokens in any case.
EXPECTED = {
    "clip/fixture tokenizer.json": [
        [998, 320, 999, 321, 999], [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999],
        [998, 27, 347, 993, 580, 69, 600, 87, 339, 91, 285, 71, 328, 999], [998, 343, 999, 344, 999],
        [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999]],
    "clip/fixture vocab+merges": [
        [998, 320, 999, 321, 999], [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999],
        [998, 27, 347, 993, 580, 69, 600, 87, 339, 91, 285, 71, 328, 999], [998, 343, 999, 344, 999],
        [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999]],
    "clip/published vocab+merges": [
        [998, 320, 999, 321, 999], [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999],
        [998, 998, 71, 328, 999], [998, 343, 999, 344, 999],
        [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999]],
    "clip/published vocab+merges+decoder": [
        [998, 320, 999, 321, 999], [998, 320, 999, 321, 999], [998, 998, 71, 328, 999], [998, 343, 999, 344, 999],
        [998, 320, 999, 321, 999]],
    "clip/published tokenizer.json": [
        [998, 320, 999, 321, 999], [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999],
        [998, 27, 347, 993, 580, 69, 600, 87, 339, 91, 285, 71, 328, 999], [998, 343, 999, 344, 999],
        [998, 320, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 321, 999]],
    "clip/tokenizer.json+decoder": [
        [998, 320, 999, 321, 999], [998, 320, 999, 321, 999], [998, 998, 71, 328, 999], [998, 343, 999, 344, 999],
        [998, 320, 999, 321, 999]],
    "clip/tokenizer.json normalized": [
        [998, 320, 999, 321, 999], [998, 320, 999, 321, 999], [998, 998, 71, 328, 999], [998, 343, 999, 344, 999],
        [998, 320, 999, 321, 999]],
    "clip/decoder single_word": [
        [998, 320, 999, 321, 999], [998, 320, 999, 321, 999],
        [998, 27, 347, 993, 580, 69, 600, 87, 339, 91, 285, 71, 328, 999],
        [998, 343, 27, 347, 524, 639, 69, 600, 87, 339, 91, 285, 344, 999], [998, 320, 999, 321, 999]],
    "xlmr/fixture tokenizer.json": [
        [0, 94, 1001, 4, 972, 2], [0, 94, 1001, 4, 972, 2], [0, 94, 972, 1001, 2],
        [0, 94, 4, 72, 120, 954, 111, 227, 73, 4, 972, 2], [0, 4, 958, 2, 4, 973, 2], [0, 4, 958, 1, 3, 4, 973, 2]],
    "xlmr/tokenizer.json single_word": [
        [0, 94, 1001, 4, 972, 2], [0, 94, 1001, 972, 2], [0, 94, 972, 1001, 2],
        [0, 94, 4, 72, 120, 954, 111, 227, 73, 4, 972, 2], [0, 4, 958, 2, 973, 2], [0, 4, 958, 1, 3, 4, 973, 2]],
    "xlmr/decoder every flag": [
        [0, 94, 1001, 4, 972, 2], [0, 94, 1001, 972, 2], [0, 94, 972, 1001, 2],
        [0, 94, 4, 72, 120, 954, 111, 227, 73, 4, 972, 2], [0, 4, 958, 2, 4, 973, 2], [0, 4, 958, 1, 3, 4, 973, 2]],
}


def write_variant(name: str, dst):
    """The tokenizer folder of variant ``name`` at ``dst``."""
    spec = VARIANTS[name]
    shutil.copytree(FIXTURE / ("prior" if name.startswith("clip") else "inpaint") / "tokenizer", dst)
    config_file = dst / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, **spec.get("config", {})}), encoding="utf-8")
    if "special_map" in spec:
        (dst / "special_tokens_map.json").write_text(json.dumps(spec["special_map"]), encoding="utf-8")
    tokenizer_json = dst / "tokenizer.json"
    if spec.get("drop_json"):
        tokenizer_json.unlink()
    elif "json_flags" in spec:
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        for token in data["added_tokens"]:
            token.update(spec["json_flags"].get(token["content"], {}))
        tokenizer_json.write_text(json.dumps(data), encoding="utf-8")
    return dst


def _load(name, folder):
    return (load_clip_tokenizer if name.startswith("clip") else load_xlmr_tokenizer)(folder)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ids_equal_transformers(name, tmp_path):
    tok = _load(name, write_variant(name, tmp_path / "tokenizer"))
    assert tok.source == ("vocab.json+merges.txt" if VARIANTS[name].get("drop_json") else "tokenizer.json")
    texts = CLIP_TEXTS if name.startswith("clip") else XLMR_TEXTS
    assert [tok.encode(text) for text in texts] == EXPECTED[name]


def test_the_padded_batch_uses_the_same_matching(tmp_path):
    tok = load_clip_tokenizer(write_variant("clip/tokenizer.json+decoder", tmp_path / "tokenizer"))
    ids, mask = tok(["a <|ENDOFTEXT|> b"], max_length=8)
    assert ids.tolist() == [[998, 320, 999, 321, 999, 999, 999, 999]] and mask.tolist() == [[1] * 5 + [0] * 3]


@pytest.mark.parametrize("file,content,where", [
    ("tokenizer_config.json", {"eos_token": 5}, "eos_token"),
    ("tokenizer_config.json", {"eos_token": {"content": E, "normalized": "yes"}}, "normalized"),
    ("tokenizer_config.json", {"added_tokens_decoder": ["<|endoftext|>"]}, "added_tokens_decoder"),
    ("tokenizer_config.json", {"added_tokens_decoder": {"999": {"normalized": True}}}, "content"),
    ("special_tokens_map.json", {"pad_token": ["<|endoftext|>"]}, "pad_token"),
])
def test_malformed_token_entries_are_model_errors(tmp_path, file, content, where):
    folder = write_variant("clip/fixture vocab+merges", tmp_path / "tokenizer")
    path = folder / file
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(json.dumps({**old, **content}), encoding="utf-8")
    with pytest.raises(ModelError, match=rf"{file}.*{where}"):
        load_clip_tokenizer(folder)
