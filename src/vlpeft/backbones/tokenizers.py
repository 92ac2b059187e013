"""Small tokenizers in the exact file formats of CLIP and SigLIP, built offline.

CLIP: byte-level BPE with CLIP's vocabulary layout (the 256 byte symbols, the same with
``</w>``, the learned merges, then ``<|startoftext|>`` and ``<|endoftext|>``), written as
``vocab.json`` + ``merges.txt`` so ``CLIPTokenizer`` loads it. Any text is encodable (bytes
are the fallback); words of the corpus become single tokens. SigLIP: a SentencePiece
unigram model with byte fallback, loaded by ``SiglipTokenizer``.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_RE = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode symbols."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(extra))]
    return dict(zip(printable + extra, map(chr, codes), strict=True))


def word_symbols(word: str) -> tuple[str, ...]:
    """A word as byte symbols, the last one marked with ``</w>``."""
    table = bytes_to_unicode()
    symbols = [table[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    return tuple(symbols)


def corpus_words(texts: Iterable[str]) -> Counter[tuple[str, ...]]:
    """Word frequencies, split the way CLIP's pre-tokenizer splits (lower-cased)."""
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for word in WORD_RE.findall(text.lower()):
            counts[word_symbols(word)] += 1
    return counts


def learn_merges(words: Counter[tuple[str, ...]], max_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair)."""
    merges: list[tuple[str, str]] = []
    words = Counter(words)
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        words = Counter({_merge(symbols, best): count for symbols, count in words.items()})
    return merges


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def write_clip_tokenizer(
    directory: Path, texts: Iterable[str], max_merges: int = 2000, max_length: int = 77
) -> int:
    """Write a CLIP-format BPE tokenizer learned on ``texts``; returns the vocabulary size."""
    base = list(bytes_to_unicode().values())
    merges = learn_merges(corpus_words(texts), max_merges)
    tokens = [*base, *(b + "</w>" for b in base), *(a + b for a, b in merges), BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": EOS,
        "model_max_length": max_length,
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)


def write_siglip_tokenizer(
    directory: Path, texts: Iterable[str], vocab_size: int = 400, max_length: int = 64
) -> int:
    """Write a SigLIP-format SentencePiece tokenizer trained on ``texts``; returns the vocabulary size."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([t.lower() for t in texts]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,
    )
    (directory / "spiece.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "SiglipTokenizer",
        "eos_token": "</s>",
        "pad_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": max_length,
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return spm.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()
