"""Read metadata CSVs whatever their text encoding (LA-DNN's release metadata is GBK)."""

from __future__ import annotations

import codecs
import io
import re
import unicodedata
from pathlib import Path

import pandas as pd
from charset_normalizer import from_bytes

__all__ = ["detect_encoding", "read_text", "read_csv_any_encoding"]

_IDEOGRAPH_RUNS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")
_BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_WESTERN_PUNCTUATION = {"Pd", "Pi", "Pf", "Po", "Ps", "Pe", "Sc", "Sm", "So", "Zs", "No"}


def _plausible_chinese(text: str) -> bool:
    """Check that ideographs, if any, are GB2312 characters and one run has two or more of them.

    Western single-byte text read as GB18030 turns an accented letter and the ASCII letter after
    it into an ideograph from the GBK extension area (second byte below 0xA1), which GB2312 lacks.
    Two adjacent accented letters can form one GB2312 ideograph, but rarely two in a row, and
    then inside a word. A single ideograph with no letter beside it, as in a cell holding only "无"
    or the caption "图1", is Chinese text too.
    """
    matches = list(_IDEOGRAPH_RUNS.finditer(text))
    if not matches:
        return True
    try:
        "".join(match.group() for match in matches).encode("gb2312")
    except UnicodeEncodeError:
        return False
    return any(len(match.group()) >= 2 or _standalone(text, match) for match in matches)


def _standalone(text: str, match: re.Match) -> bool:
    """Check that no letter touches the ideograph run `match` on either side."""
    before = text[match.start() - 1] if match.start() > 0 else ""
    after = text[match.end()] if match.end() < len(text) else ""
    return not before.isalpha() and not after.isalpha()


def _plausible_western(text: str) -> bool:
    """Check that every non-ASCII character is a letter or common punctuation."""
    return all(
        ord(char) < 128 or char.isalpha() or unicodedata.category(char) in _WESTERN_PUNCTUATION
        for char in text
    )


def detect_encoding(data: bytes) -> str:
    """Return the encoding of `data`.

    A byte-order mark selects UTF-8, UTF-16 or UTF-32. UTF-8 without a mark is taken when the
    bytes decode strictly. Next comes GB18030 (a superset of GBK) when the bytes decode strictly
    and plausibly as Chinese text or as English text with GBK punctuation, as in LA-DNN's release
    metadata, then Windows-1252 when
    every non-ASCII character it yields is a letter or punctuation. Anything else goes to
    charset-normalizer, whose statistics need more non-ASCII text than a mostly English CSV holds,
    which is why the checks above come first.
    """
    # Byte-order marks first; UTF-32 LE's mark begins with UTF-16 LE's, so it is tested first.
    for mark, encoding in _BYTE_ORDER_MARKS:
        if data.startswith(mark):
            return encoding
    for encoding, plausible in (
        ("utf-8", None),
        ("gb18030", _plausible_chinese),
        ("cp1252", _plausible_western),
    ):
        try:
            text = data.decode(encoding)
        except UnicodeDecodeError:
            continue
        if plausible is None or plausible(text):
            return encoding
    best = from_bytes(data).best()
    return best.encoding if best is not None else "latin-1"


def read_text(path: str | Path) -> tuple[str, str]:
    """Return the text of `path` and the encoding it was decoded with."""
    data = Path(path).read_bytes()
    encoding = detect_encoding(data)
    try:
        return data.decode(encoding), encoding
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path}: text is not valid {encoding} ({err.reason} at byte {err.start}); "
            "save it again as UTF-8"
        ) from err


def read_csv_any_encoding(path: str | Path, **kwargs) -> tuple[pd.DataFrame, str]:
    """Read a CSV as strings, detecting its encoding; empty cells stay missing."""
    text, encoding = read_text(path)
    try:
        frame = pd.read_csv(
            io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""], **kwargs
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{path}: not a readable CSV file ({err})") from err
    return frame, encoding
