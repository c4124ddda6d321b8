"""Text tokenizers of the two Kandinsky 2.1 text encoders, on the ``tokenizers`` library.

* CLIP (prior ``tokenizer/``): byte-level BPE. Loaded from ``tokenizer.json`` when present; otherwise built
  from ``vocab.json`` + ``merges.txt`` with the normalizer / pre-tokenizer / post-processor / decoder that
  transformers 5.24's ``CLIPTokenizer`` builds (4.57's ``convert_slow_tokenizer.CLIPConverter`` builds the same
  apart from the two special-token alternatives at the front of the split regex; read from both sources).
* XLM-R (inpaint ``tokenizer/``): ``tokenizer.json`` (a Unigram model); folders that only hold
  ``sentencepiece.bpe.model`` use the ``sentencepiece`` package (imported lazily) with fairseq's id mapping.

Special tokens typed in a prompt are matched with the folder's flags (normalized, lstrip, rstrip, single_word)
as transformers 5.24 resolves them (``read_special_tokens``): e.g. ``normalized: true`` makes CLIP match
``<|ENDOFTEXT|>`` in any case, since its normalizer lowercases. Measured against transformers (ids in
tests/test_tokenizer_special.py): 5.24.0 ``CLIPTokenizer`` / ``XLMRobertaTokenizer`` give the same ids as this
module on every folder variant tried (for XLM-R: those with a tokenizer.json). 4.57.6 differs: its slow
``CLIPTokenizer`` (what diffusers loads with 4.x, model_index.json naming ``CLIPTokenizer``) matches CLIP special
tokens in any case whatever the flags; ``CLIPTokenizerFast`` does too when built from vocab.json + merges.txt,
and with a tokenizer.json follows its flags and ignores ``added_tokens_decoder``. The XLM-R sentencepiece
fallback matches special tokens exactly as written, like 4.57.6's slow ``XLMRobertaTokenizer``; 5.24.0 (and
4.57.6's fast one) also match them after NFKC, e.g. a full-width ``＜mask＞``.

Every tokenizer is called as ``tok(texts, max_length=77) -> (input_ids, attention_mask)``, both int64 numpy
arrays of shape (B, max_length): special tokens added, over-long texts truncated so that the leading BOS and the
trailing EOS survive, right-padded with the pad token (attention mask 0 there). This is what the diffusers
pipelines get from ``tokenizer(..., padding="max_length", max_length=77, truncation=True)``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import model_io
from .errors import ModelError, UserError
from .model_io import Config

TextBatch = Union[str, Sequence[str]]

# The split regex of transformers' CLIPTokenizer (5.x). 4.x CLIPConverter used the same regex without the two
# special-token alternatives, which only matter for a special token that is not matched as one (e.g. typed in
# upper case where normalized is false): 5.x then BPE-encodes it as one word.
CLIP_SPLIT_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                      r"""[^\s\p{L}\p{N}]+""")

CLIP_SPECIAL_DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                         "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
XLMR_SPECIAL_DEFAULTS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                         "mask_token": "<mask>"}

# fairseq's dictionary layout used by every XLM-R checkpoint: these four first, then sentencepiece piece k at k + 1,
# then <mask> after the last piece.
FAIRSEQ_SPECIAL_IDS = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
FAIRSEQ_OFFSET = 1

# transformers' order of the named special tokens (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------


def _optional_config(path: Path) -> Config:
    """A tokenizer folder's optional JSON config file (an empty Config when it is absent)."""
    return model_io.read_config(path.parent, path.name) if path.is_file() else Config({}, path)


@dataclass
class SpecialTokens:
    """A tokenizer folder's named special tokens and the AddedTokens that make the tokenizer match them."""

    names: Dict[str, str]   # "eos_token" -> "<|endoftext|>", ...
    added: list             # tokenizers.AddedToken, in the order transformers adds them (the last one counts)


def _added_token(entry: Config):
    """An AddedToken from a token entry (tokenizer_config.json, special_tokens_map.json, added_tokens_decoder).
    Absent flags take transformers' AddedToken defaults: false, and normalized = not special."""
    from tokenizers import AddedToken

    special = entry.bool("special", True)
    flags = {flag: entry.bool(flag, False) for flag in ("single_word", "lstrip", "rstrip")}
    return AddedToken(entry.str("content"), special=special, normalized=entry.bool("normalized", not special), **flags)


def _token_entry(config: Config, key: str) -> Optional[Config]:
    """``config[key]`` as a token entry: a string (matched exactly) or an AddedToken object; None if unset."""
    value = config.value(key, None)
    if value is None:
        return None
    if isinstance(value, str):
        value = {"content": value}
    elif not isinstance(value, dict):
        raise config.error(key, f"must be a token string or an AddedToken object, got {json.dumps(value)}")
    return Config(value, f"{config.source}: {key}")


def _decoder_tokens(config: Config) -> dict:
    """tokenizer_config.json's ``added_tokens_decoder`` ({"id": AddedToken fields}) as {content: AddedToken},
    in id order."""
    decoder = config.value("added_tokens_decoder", None)
    if decoder is None:
        return {}
    if not isinstance(decoder, dict) or not all(k.isdigit() for k in decoder):
        raise config.error("added_tokens_decoder", "must be an object {\"id\": token}")
    tokens = {}
    for token_id in sorted(decoder, key=int):
        token = _added_token(Config(decoder[token_id], f"{config.source}: added_tokens_decoder: {token_id}"))
        tokens[token.content] = token
    return tokens


def read_special_tokens(tokenizer_dir: Path, defaults: Dict[str, str], known: Optional[dict] = None) -> SpecialTokens:
    """The named special tokens of a tokenizer folder and how each one is matched, as transformers 5.x
    resolves them (checked against transformers 5.24.0; see tests/test_tokenizer_special.py):

    * the token strings: class ``defaults``, then tokenizer_config.json, then special_tokens_map.json (wins);
    * how they match (normalized, lstrip, rstrip, single_word): with an ``added_tokens_decoder`` in
      tokenizer_config.json, its entries (special_tokens_map.json is then not read); else ``known`` (the
      tokenizer.json ``added_tokens``) for a token it holds; else the entry's own AddedToken flags, where a plain
      string matches exactly (all flags false). Tokens that share a string (CLIP's eos, unk and pad) are added
      in SPECIAL_KEYS order, so the last one's flags count.
    """
    folder = Path(tokenizer_dir)
    config = _optional_config(folder / "tokenizer_config.json")
    decoder = _decoder_tokens(config)
    sources = [config] if decoder else [config, _optional_config(folder / "special_tokens_map.json")]
    known = decoder or known or {}
    entries = {key: Config({"content": value}, f"{key} default") for key, value in defaults.items()}
    for source in sources:
        for key in SPECIAL_KEYS:
            entry = _token_entry(source, key)
            if entry is not None:
                entries[key] = entry
    names, added = {}, list(decoder.values())
    for key in SPECIAL_KEYS:
        if key in entries:
            content = entries[key].str("content")
            names[key] = content
            added.append(known[content] if content in known else _added_token(entries[key]))
    return SpecialTokens(names, added)


def _as_text_list(texts: TextBatch) -> List[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings, got {bad[0]}")
    return texts


def _check_dir(tokenizer_dir) -> Path:
    path = Path(tokenizer_dir)
    if not path.is_dir():
        raise ModelError(f"tokenizer folder {path} does not exist")
    return path


def _load_tokenizer_json(path: Path):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses for every parse problem
        raise ModelError(f"cannot read tokenizer {path}: {exc}") from None
    tok.no_truncation()
    tok.no_padding()
    return tok


# ------------------------------------------------------------------------------------------------------------------
# tokenizer classes
# ------------------------------------------------------------------------------------------------------------------


class TextTokenizer:
    """Common interface: ``__call__`` pads/truncates to ``max_length``; ``untruncated_lengths`` measures."""

    kind = "text"

    def __init__(self, pad_token_id: int, source: str):
        self.pad_token_id = int(pad_token_id)
        self.source = source  # "tokenizer.json", "vocab.json+merges.txt" or "sentencepiece.bpe.model"

    # subclasses implement these two; both return id lists that include the special tokens
    def _encode(self, texts: List[str], max_length: Optional[int]) -> List[List[int]]:
        raise NotImplementedError

    def encode(self, text: str, max_length: Optional[int] = None) -> List[int]:
        """Ids of one text with special tokens, truncated to ``max_length`` (None: no truncation), unpadded."""
        return self._encode([text], max_length)[0]

    def untruncated_lengths(self, texts: TextBatch) -> np.ndarray:
        """Length of each text's ids, special tokens included, before truncation (int64, shape (B,))."""
        rows = self._encode(_as_text_list(texts), None)
        return np.array([len(r) for r in rows], dtype=np.int64)

    def __call__(self, texts: TextBatch, max_length: int = 77) -> Tuple[np.ndarray, np.ndarray]:
        texts = _as_text_list(texts)
        max_length = int(max_length)
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (room for the special tokens), got {max_length}")
        rows = self._encode(texts, max_length)
        ids = np.full((len(texts), max_length), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(texts), max_length), dtype=np.int64)
        for i, row in enumerate(rows):
            if len(row) > max_length:  # cannot happen with a sane post-processor; never emit a wrong shape
                raise RuntimeError(f"{self.kind} tokenizer produced {len(row)} ids for max_length {max_length}")
            ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return ids, mask


class HFTokenizer(TextTokenizer):
    """A ``tokenizers.Tokenizer`` (its post-processor adds the special tokens; its truncation keeps them),
    matching the folder's special tokens with the folder's flags (``special.added``)."""

    def __init__(self, tokenizer, special: SpecialTokens, source: str, folder: Path):
        names = special.names
        pad_id = tokenizer.token_to_id(names["pad_token"])
        if pad_id is None:
            raise ModelError(f"{folder}: {self.kind} tokenizer ({source}): pad token {names['pad_token']!r} is not "
                             "in the vocabulary")
        super().__init__(pad_id, source)
        tokenizer.add_special_tokens(special.added)
        self.tokenizer = tokenizer
        self.special_tokens = dict(names)
        self.bos_token_id = tokenizer.token_to_id(names["bos_token"])
        self.eos_token_id = tokenizer.token_to_id(names["eos_token"])

    def _encode(self, texts, max_length):
        tok = self.tokenizer
        if max_length is None:
            tok.no_truncation()
        else:
            # truncates the text part to max_length - (number of special tokens), then post-processes
            tok.enable_truncation(max_length=max_length)
        try:
            encodings = tok.encode_batch(texts, add_special_tokens=True)
        finally:
            tok.no_truncation()
        return [list(e.ids) for e in encodings]


class ClipTokenizer(HFTokenizer):
    kind = "CLIP"


class XlmrTokenizer(HFTokenizer):
    kind = "XLM-R"


class XlmrSentencePieceTokenizer(TextTokenizer):
    """XLM-R from ``sentencepiece.bpe.model`` alone, with fairseq's ids (as transformers' XLMRobertaTokenizer):
    ``<s>``=0 ``<pad>``=1 ``</s>``=2 ``<unk>``=3, piece k -> k + 1, sentencepiece's unk -> 3,
    ``<mask>`` = number of pieces + 1. Special-token strings inside a text are split out first and map to their
    ids, matched as written: the folder's flags are not applied here (lstrip/rstrip would change nothing, as
    sentencepiece drops the spaces around them anyway; a normalized token is not looked for after NFKC)."""

    kind = "XLM-R"

    def __init__(self, model_file: Path):
        spm = _import_sentencepiece()
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as exc:  # RuntimeError / OSError from the C++ loader
            raise ModelError(f"cannot read sentencepiece model {model_file}: {exc}") from None
        super().__init__(FAIRSEQ_SPECIAL_IDS["<pad>"], "sentencepiece.bpe.model")
        self.special_ids = dict(FAIRSEQ_SPECIAL_IDS)
        self.special_ids["<mask>"] = self.sp.get_piece_size() + FAIRSEQ_OFFSET
        self.bos_token_id = self.special_ids["<s>"]
        self.eos_token_id = self.special_ids["</s>"]
        self.unk_token_id = self.special_ids["<unk>"]
        self._sp_unk = self.sp.unk_id()
        names = sorted(self.special_ids, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(re.escape(n) for n in names) + ")")

    def _body(self, text: str) -> List[int]:
        out: List[int] = []
        for segment in self._split.split(text):
            if segment in self.special_ids:
                out.append(self.special_ids[segment])
            elif segment:
                out.extend(self.unk_token_id if i == self._sp_unk else i + FAIRSEQ_OFFSET
                           for i in self.sp.encode(segment))
        return out

    def _encode(self, texts, max_length):
        rows = []
        for text in texts:
            body = self._body(text)
            if max_length is not None:
                body = body[:max_length - 2]
            rows.append([self.bos_token_id] + body + [self.eos_token_id])
        return rows


def _import_sentencepiece():
    try:
        import sentencepiece
    except ImportError:
        raise UserError("this XLM-R tokenizer folder has no tokenizer.json, only sentencepiece.bpe.model, which "
                        "needs the 'sentencepiece' package: pip install sentencepiece "
                        "(or pip install 'kandinsky-cli[sentencepiece]')") from None
    return sentencepiece


# ------------------------------------------------------------------------------------------------------------------
# loaders
# ------------------------------------------------------------------------------------------------------------------


def build_clip_tokenizer(vocab_file: Path, merges_file: Path, special_tokens: Dict[str, str]):
    """A ``tokenizers.Tokenizer`` equal to what transformers' CLIPTokenizer builds from vocab.json + merges.txt,
    before the special tokens are added as such (``HFTokenizer`` adds them with the folder's flags)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    try:
        vocab, merges = BPE.read_file(str(vocab_file), str(merges_file))  # skips the "#version" header line
    except Exception as exc:
        raise ModelError(f"cannot read CLIP vocabulary {vocab_file} / {merges_file}: {exc}") from None
    bos, eos, unk = special_tokens["bos_token"], special_tokens["eos_token"], special_tokens["unk_token"]
    for token in (bos, eos):
        if token not in vocab:
            raise ModelError(f"{vocab_file}: special token {token!r} is not in the vocabulary")
    try:
        model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                    end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk)
    except Exception as exc:  # e.g. a merge whose result is not in vocab.json
        raise ModelError(f"inconsistent CLIP vocabulary {vocab_file} / {merges_file}: {exc}") from None
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]),  # (sep, cls)
                                                      trim_offsets=False, add_prefix_space=False)
    return tok


def _added_tokens(tokenizer) -> dict:
    """A tokenizer.json's ``added_tokens`` as {content: AddedToken}."""
    return {token.content: token for token in tokenizer.get_added_tokens_decoder().values()}


def load_clip_tokenizer(tokenizer_dir) -> ClipTokenizer:
    """The prior's CLIP tokenizer: ``tokenizer.json`` if present, else ``vocab.json`` + ``merges.txt``."""
    path = _check_dir(tokenizer_dir)
    if (path / "tokenizer.json").is_file():
        tok = _load_tokenizer_json(path / "tokenizer.json")
        special = read_special_tokens(path, CLIP_SPECIAL_DEFAULTS, _added_tokens(tok))
        return ClipTokenizer(tok, special, "tokenizer.json", path)
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.is_file() and merges.is_file():
        special = read_special_tokens(path, CLIP_SPECIAL_DEFAULTS)
        tok = build_clip_tokenizer(vocab, merges, special.names)
        return ClipTokenizer(tok, special, "vocab.json+merges.txt", path)
    raise ModelError(f"CLIP tokenizer folder {path} has neither tokenizer.json nor vocab.json + merges.txt")


def load_xlmr_tokenizer(tokenizer_dir) -> TextTokenizer:
    """The inpaint pipeline's XLM-R tokenizer: ``tokenizer.json`` if present, else ``sentencepiece.bpe.model``."""
    path = _check_dir(tokenizer_dir)
    if (path / "tokenizer.json").is_file():
        tok = _load_tokenizer_json(path / "tokenizer.json")
        special = read_special_tokens(path, XLMR_SPECIAL_DEFAULTS, _added_tokens(tok))
        return XlmrTokenizer(tok, special, "tokenizer.json", path)
    spm_file = path / "sentencepiece.bpe.model"
    if spm_file.is_file():
        return XlmrSentencePieceTokenizer(spm_file)
    raise ModelError(f"XLM-R tokenizer folder {path} has neither tokenizer.json nor sentencepiece.bpe.model")
