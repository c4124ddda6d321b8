"""Text tokenizers of the two Kandinsky 2.1 text encoders, on the ``tokenizers`` library.

* CLIP (prior ``tokenizer/``): byte-level BPE. Loaded from ``tokenizer.json`` when present; otherwise built
  from ``vocab.json`` + ``merges.txt`` with the same normalizer / pre-tokenizer / post-processor / decoder that
  transformers' ``CLIPTokenizer`` (5.x; identical to 4.x ``convert_slow_tokenizer.CLIPConverter`` apart from
  the two special-token alternatives at the front of the split regex) builds.
* XLM-R (inpaint ``tokenizer/``): ``tokenizer.json`` (a Unigram model); folders that only hold
  ``sentencepiece.bpe.model`` use the ``sentencepiece`` package (imported lazily) with fairseq's id mapping.

Every tokenizer is called as ``tok(texts, max_length=77) -> (input_ids, attention_mask)``, both int64 numpy
arrays of shape (B, max_length): special tokens added, over-long texts truncated so that the leading BOS and the
trailing EOS survive, right-padded with the pad token (attention mask 0 there). This is what the diffusers
pipelines get from ``tokenizer(..., padding="max_length", max_length=77, truncation=True)``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import UserError

TextBatch = Union[str, Sequence[str]]

# The split regex of transformers' CLIPTokenizer (5.x). 4.x CLIPConverter used the same regex without the two
# special-token alternatives; special tokens are matched as added tokens before pre-tokenization anyway.
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


# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------


def _optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _token_content(value) -> Optional[str]:
    """A special-token entry of tokenizer_config.json / special_tokens_map.json: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def read_special_tokens(tokenizer_dir: Path, defaults: Dict[str, str]) -> Dict[str, str]:
    """The special tokens of a tokenizer folder: class defaults, then tokenizer_config.json, then
    special_tokens_map.json (the latter wins, as in transformers' ``from_pretrained``)."""
    tokens = dict(defaults)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = _optional_json(Path(tokenizer_dir) / name)
        for key in defaults:
            content = _token_content(data.get(key))
            if content is not None:
                tokens[key] = content
    return tokens


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
        raise UserError(f"tokenizer folder {path} does not exist")
    return path


def _load_tokenizer_json(path: Path):
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises plain Exception subclasses for every parse problem
        raise UserError(f"cannot read tokenizer {path}: {exc}") from None
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
    """A ``tokenizers.Tokenizer`` (its post-processor adds the special tokens; its truncation keeps them)."""

    def __init__(self, tokenizer, special_tokens: Dict[str, str], source: str):
        pad = special_tokens["pad_token"]
        pad_id = tokenizer.token_to_id(pad)
        if pad_id is None:
            raise UserError(f"{self.kind} tokenizer ({source}): pad token {pad!r} is not in the vocabulary")
        super().__init__(pad_id, source)
        self.tokenizer = tokenizer
        self.special_tokens = dict(special_tokens)
        self.bos_token_id = tokenizer.token_to_id(special_tokens["bos_token"])
        self.eos_token_id = tokenizer.token_to_id(special_tokens["eos_token"])

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
    ids (what the added tokens of a tokenizer.json do)."""

    kind = "XLM-R"

    def __init__(self, model_file: Path):
        spm = _import_sentencepiece()
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as exc:  # RuntimeError / OSError from the C++ loader
            raise UserError(f"cannot read sentencepiece model {model_file}: {exc}") from None
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
    """A ``tokenizers.Tokenizer`` equal to what transformers' CLIPTokenizer builds from vocab.json + merges.txt."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    try:
        vocab, merges = BPE.read_file(str(vocab_file), str(merges_file))  # skips the "#version" header line
    except Exception as exc:
        raise UserError(f"cannot read CLIP vocabulary {vocab_file} / {merges_file}: {exc}") from None
    bos, eos, unk = special_tokens["bos_token"], special_tokens["eos_token"], special_tokens["unk_token"]
    for token in (bos, eos):
        if token not in vocab:
            raise UserError(f"{vocab_file}: special token {token!r} is not in the vocabulary")
    try:
        model = BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                    end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk)
    except Exception as exc:  # e.g. a merge whose result is not in vocab.json
        raise UserError(f"inconsistent CLIP vocabulary {vocab_file} / {merges_file}: {exc}") from None
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
    specials = []
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        token = special_tokens[key]
        if token not in specials:
            specials.append(token)
    tok.add_special_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=False,
                                       special=True) for t in specials])
    return tok


def load_clip_tokenizer(tokenizer_dir) -> ClipTokenizer:
    """The prior's CLIP tokenizer: ``tokenizer.json`` if present, else ``vocab.json`` + ``merges.txt``."""
    path = _check_dir(tokenizer_dir)
    special = read_special_tokens(path, CLIP_SPECIAL_DEFAULTS)
    if (path / "tokenizer.json").is_file():
        return ClipTokenizer(_load_tokenizer_json(path / "tokenizer.json"), special, "tokenizer.json")
    vocab, merges = path / "vocab.json", path / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return ClipTokenizer(build_clip_tokenizer(vocab, merges, special), special, "vocab.json+merges.txt")
    raise UserError(f"CLIP tokenizer folder {path} has neither tokenizer.json nor vocab.json + merges.txt")


def load_xlmr_tokenizer(tokenizer_dir) -> TextTokenizer:
    """The inpaint pipeline's XLM-R tokenizer: ``tokenizer.json`` if present, else ``sentencepiece.bpe.model``."""
    path = _check_dir(tokenizer_dir)
    if (path / "tokenizer.json").is_file():
        special = read_special_tokens(path, XLMR_SPECIAL_DEFAULTS)
        return XlmrTokenizer(_load_tokenizer_json(path / "tokenizer.json"), special, "tokenizer.json")
    spm_file = path / "sentencepiece.bpe.model"
    if spm_file.is_file():
        return XlmrSentencePieceTokenizer(spm_file)
    raise UserError(f"XLM-R tokenizer folder {path} has neither tokenizer.json nor sentencepiece.bpe.model")
