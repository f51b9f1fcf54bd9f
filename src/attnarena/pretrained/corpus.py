"""Real English text available offline: Python's own documentation.

Sentences from the standard library's help topics (``pydoc_data.topics``, the Language
Reference sections that ``help()`` shows, about 465,000 characters) and the docstrings of
about a hundred standard-library modules, with a fixed train/test split by a hash of each
sentence. The text is the running Python's, so the exact count depends on its version
(Python 3.11: 5,349 sentences, 525,589 characters).
"""
from __future__ import annotations

import random

import functools
import hashlib
import importlib
import inspect
import re
import warnings

DOCSTRING_MODULES = (
    "builtins os os.path re json collections functools itertools pathlib string textwrap "
    "argparse logging subprocess threading unittest email http.client urllib.parse datetime "
    "decimal fractions statistics random math typing dataclasses enum inspect ast asyncio "
    "sqlite3 csv shutil tempfile zipfile tarfile pickle copy heapq bisect array struct io time "
    "calendar locale gettext socket ssl select selectors signal multiprocessing "
    "concurrent.futures queue sched contextlib abc numbers operator weakref types pprint "
    "reprlib difflib html xml.etree.ElementTree configparser hashlib hmac secrets base64 "
    "binascii codecs unicodedata glob fnmatch linecache tokenize keyword dis pdb timeit trace "
    "traceback warnings gc site sysconfig platform doctest venv zipimport importlib "
    "pkgutil").split()
TEST_SHARE = 10  # one sentence in ten is held out
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def sentences_of(text: str, min_words: int = 6, max_words: int = 64) -> list[str]:
    """Prose sentences of a text: paragraphs that are not indented code, split after
    sentence-ending punctuation, kept when mostly letters."""
    found = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = paragraph.splitlines()
        if not lines or lines[0].startswith(("    ", "\t", ">>>")):
            continue
        for sentence in _SENTENCE_END.split(" ".join(line.strip() for line in lines)):
            sentence = sentence.strip()
            words = len(sentence.split())
            letters = sum(c.isalpha() or c == " " for c in sentence)
            if (min_words <= words <= max_words and sentence[-1] in ".!?"
                    and letters > 0.85 * len(sentence)):
                found.append(sentence)
    return found


def _docstrings():
    for name in DOCSTRING_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a module this Python lacks (a build without ssl, say)
            continue
        yield module.__doc__ or ""
        for attr, value in sorted(vars(module).items()):
            doc = getattr(value, "__doc__", None)
            if not attr.startswith("_") and isinstance(doc, str) and (
                    inspect.isclass(value) or inspect.isroutine(value)):
                yield inspect.cleandoc(doc)


@functools.lru_cache(maxsize=1)
def english_sentences() -> tuple[str, ...]:
    """Every sentence of the corpus, sorted, without duplicates."""
    from pydoc_data import topics

    found = set()
    for key in sorted(topics.topics):
        found.update(sentences_of(topics.topics[key]))
    with warnings.catch_warnings():  # deprecated aliases met while reading docstrings
        warnings.simplefilter("ignore")
        for doc in _docstrings():
            found.update(sentences_of(doc))
    return tuple(sorted(found))


def _held_out(sentence: str) -> bool:
    digest = hashlib.sha1(sentence.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % TEST_SHARE == 0


def corpus_split(split: str) -> list[str]:
    """The "train" or "test" sentences (a fixed split: about one in ten is "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return [s for s in english_sentences() if _held_out(s) == (split == "test")]


def sentence_batches(encoder, sentences, batch_size, max_length, steps, seed):
    """``steps`` tokenized batches cycling through shuffled ``sentences``."""
    order = list(sentences)
    rng = random.Random(seed)
    batches, position = [], len(order)
    for _ in range(steps):
        if position + batch_size > len(order):
            rng.shuffle(order)
            position = 0
        batches.append(encoder.tokenize(order[position:position + batch_size], max_length))
        position += batch_size
    return batches


@functools.lru_cache(maxsize=1)
def english_documents() -> tuple[str, ...]:
    """The corpus as running text for a language model: each help topic and each
    docstring one document (prose and code as written), in a fixed order, without
    duplicates or near-empty ones."""
    from pydoc_data import topics

    found = [topics.topics[key].strip() for key in sorted(topics.topics)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found += [doc.strip() for doc in _docstrings()]
    seen, out = set(), []
    for doc in found:
        if len(doc) >= 200 and doc not in seen:
            seen.add(doc)
            out.append(doc)
    return tuple(out)


def document_split(split: str) -> list[str]:
    """The "train" or "test" documents, split by a hash of each as ``corpus_split``
    splits sentences (about one in ten is "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return [d for d in english_documents() if _held_out(d) == (split == "test")]
