"""Text <-> class ids. Id 0 is the CTC blank; characters follow in a fixed sorted order.

The charset is built from the training split by ``pull``, saved next to the data as
``charset.json`` and copied into every checkpoint, so decoding never needs the data folder.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

BLANK_ID = 0
CHARSET_VERSION = 1
# Unicode control (Cc) and format (Cf) characters: invisible (zero-width spaces and joiners,
# bidi marks, soft hyphens, BOMs) or not text at all (BEL, ESC). None can enter a charset,
# and pull removes them from text.
INVISIBLE_CATEGORIES = ("Cc", "Cf")


def is_invisible(char: str) -> bool:
    return unicodedata.category(char) in INVISIBLE_CATEGORIES


class CharsetError(PipelineError, ValueError):
    pass


@dataclass(frozen=True)
class Charset:
    characters: tuple[str, ...]  # without the blank; class id of characters[i] is i + 1

    def __post_init__(self) -> None:
        for ch in self.characters:
            if len(ch) != 1:
                raise CharsetError(f"charset entries must be single characters, got {ch!r}")
            if is_invisible(ch) or (ch.isspace() and ch != " "):
                raise CharsetError(
                    f"charset entries must be visible characters or ' ', got {ch!r} "
                    f"(Unicode category {unicodedata.category(ch)})"
                )
        if len(set(self.characters)) != len(self.characters):
            raise CharsetError("charset has duplicate characters")
        object.__setattr__(self, "_index", {ch: i + 1 for i, ch in enumerate(self.characters)})

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Charset:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(tuple(sorted(seen)))

    @property
    def num_classes(self) -> int:
        """Output size of the network: the characters plus the blank."""
        return len(self.characters) + 1

    def unknown(self, text: str) -> set[str]:
        return {ch for ch in text if ch not in self._index}  # type: ignore[attr-defined]

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``; raises naming the characters the charset lacks."""
        missing = self.unknown(text)
        if missing:
            raise CharsetError(f"characters not in the charset: {''.join(sorted(missing))!r}")
        return [self._index[ch] for ch in text]  # type: ignore[attr-defined]

    def encode_known(self, text: str) -> list[int]:
        """Ids of the characters of ``text`` the charset has; the others are skipped."""
        index = self._index  # type: ignore[attr-defined]
        return [index[ch] for ch in text if ch in index]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids (already collapsed, no blanks) -> text."""
        return "".join(self.characters[i - 1] for i in ids if i != BLANK_ID)

    def extended(self, texts: Iterable[str]) -> Charset:
        """This charset plus any new characters of ``texts``, appended so old ids keep."""
        new = sorted({ch for text in texts for ch in text} - set(self.characters))
        return Charset(self.characters + tuple(new))

    def to_dict(self) -> dict:
        return {
            "version": CHARSET_VERSION,
            "blank_id": BLANK_ID,
            "characters": "".join(self.characters),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Charset:
        if data.get("version") != CHARSET_VERSION or data.get("blank_id") != BLANK_ID:
            found = {key: data.get(key) for key in ("version", "blank_id")}
            raise CharsetError(f"unsupported charset format: {found}")
        return cls(tuple(data["characters"]))

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8"
        )

    @classmethod
    def load(cls, path: Path) -> Charset:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise CharsetError(f"{path}: cannot read charset: {error}") from None
