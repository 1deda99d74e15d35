"""A tiny WikiText-103 in the release's exact file format, for tests.

The real ``wiki.*.tokens`` files: every line starts with a space and ends with `` \\n``; headings are
`` = Title = `` / `` = = Section = = ``; a blank line `` \\n`` surrounds every heading and paragraph; rare
words are already ``<unk>``; numbers are split as ``1 @,@ 200`` and ``3 @.@ 5``, hyphens as ``@-@``.

    info = write_wikitext(tmp_path)
    data = WikiText103(root=info.root, vocab_size=None, max_length=8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRAIN = [
    " = Zeta River = ",
    " The Zeta River is a river in the north of Alba . It is 1 @,@ 200 km long and has a <unk> delta . ",
    " = = Course = = ",
    " The river rises in the hills and flows east @-@ north to the sea . apple trees grow on its banks . ",
    " Over 3 @.@ 5 million people live near the river ( Japanese : 川 , lit . river ) . ",
    " = = History = = ",
    " In 1850 the river was named by <unk> <unk> , a <unk> from Alba ; the name means \" café \" . ",
    " = Nord Station = ",
    " Nord Station is a railway station on the river line . ",
]
VALID = [
    " = Alba = ",
    " Alba is a town on the Zeta River . Its harbour has 40 @,@ 000 boats . ",
]
TEST = [
    " = = Climate = = ",
    " The river is cold in winter and warm in summer . ",
]


def to_file_text(paragraphs: list[str]) -> str:
    """The release's layout: a blank line first and after every paragraph/heading, `` \\n`` line ends."""
    return " \n" + "".join(f"{p}\n \n" for p in paragraphs)


@dataclass(frozen=True)
class WikiTextFixture:
    """``root`` (for ``dataset.root``), the ``wikitext-103`` folder, and each file's exact text."""

    root: Path
    folder: Path
    texts: dict[str, str]  # "train" / "val" / "test" -> file content


def write_wikitext(root: str | Path, train: list[str] = TRAIN, valid: list[str] = VALID,
                   test: list[str] = TEST) -> WikiTextFixture:
    """Write ``root/wikitext-103/wiki.{train,valid,test}.tokens`` (UTF-8) from the paragraphs given."""
    root = Path(root)
    folder = root / "wikitext-103"
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"train": to_file_text(train), "val": to_file_text(valid), "test": to_file_text(test)}
    for split, stem in (("train", "train"), ("val", "valid"), ("test", "test")):
        (folder / f"wiki.{stem}.tokens").write_text(texts[split], encoding="utf-8", newline="")
    return WikiTextFixture(root, folder, texts)


def reference_words(text: str) -> list[str]:
    """The words of a file's text with ``<eos>`` after every line, line by line (the slow obvious way)."""
    words = []
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        words += line.split() + ["<eos>"]
    return words


def reference_vocab(text: str) -> list[str]:
    """``<eos>`` then the words by descending count, ties by first position, computed independently."""
    words = reference_words(text)
    first = {}
    for i, w in enumerate(words):
        first.setdefault(w, i)
    counts = {w: words.count(w) for w in first}
    return ["<eos>"] + sorted((w for w in first if w != "<eos>"), key=lambda w: (-counts[w], first[w]))
