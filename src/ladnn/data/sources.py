"""List image files in a folder or a zip archive without extracting anything to disk, and the
helpers that derive what a file name can tell (patient group, date, negative subtype)."""

from __future__ import annotations

import re
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_MEMBER_BYTES",
    "SourceFile",
    "list_image_files",
    "patient_group",
    "parse_collection_date",
    "negative_subtype_of",
    "image_stem",
    "source_from_name",
]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"}
ARCHIVE_SUFFIXES = {".zip", ".tar", ".gz", ".tgz", ".7z", ".rar"}
# Largest uncompressed size of one archive member. A 4096 x 4096 16-bit DICOM slice is 32 MiB, so
# a larger member is a zip bomb or not a slice. zipfile stops decompressing at the declared size.
MAX_MEMBER_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class SourceFile:
    # Path of the file inside its folder or archive, with forward slashes.
    name: str
    read_bytes: Callable[[], bytes]
    # The folder or archive it came from.
    container: str


def image_stem(file_name: str) -> str:
    """Drop an image extension only; names such as `2020.03.25.20043166-p17-78` keep their dots."""
    path = PurePosixPath(file_name)
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else path.name


def _zip_reader(archive: Path, member: str) -> Callable[[], bytes]:
    """Return a reader of one member; a damaged member raises OSError naming it."""

    def read() -> bytes:
        try:
            with zipfile.ZipFile(archive) as opened:
                return opened.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, KeyError) as err:
            raise OSError(f"{archive}: member {member!r} cannot be read ({err})") from err

    return read


def _list_zip(archive: Path) -> list[SourceFile]:
    try:
        opened = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as err:
        raise ValueError(f"{archive}: not a readable zip archive ({err})") from err
    files = []
    with opened:
        for info in opened.infolist():
            name = info.filename
            parts = PurePosixPath(name).parts
            if info.is_dir() or not parts or parts[0] == "__MACOSX" or parts[-1].startswith("."):
                continue
            if name.startswith("/") or ".." in parts or "\\" in name:
                raise ValueError(f"{archive}: member {name!r} has a path outside the archive root")
            suffix = PurePosixPath(name).suffix.lower()
            if suffix in ARCHIVE_SUFFIXES:
                raise ValueError(
                    f"{archive}: nested archive {name!r} is not supported; unpack it first"
                )
            if suffix in IMAGE_SUFFIXES and info.file_size > MAX_MEMBER_BYTES:
                raise ValueError(
                    f"{archive}: member {name!r} declares {info.file_size} bytes uncompressed, "
                    f"over the limit of {MAX_MEMBER_BYTES} bytes for one image"
                )
            if suffix in IMAGE_SUFFIXES:
                files.append(SourceFile(name, _zip_reader(archive, name), str(archive)))
    return files


def list_image_files(path: str | Path) -> list[SourceFile]:
    """List the image files of a folder (recursively) or a zip archive, sorted by name."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        files = _list_zip(path)
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        files = [SourceFile(path.name, path.read_bytes, str(path.parent))]
    elif path.is_dir():
        files = [
            SourceFile(file.relative_to(path).as_posix(), file.read_bytes, str(path))
            for file in path.rglob("*")
            if file.is_file()
            and file.suffix.lower() in IMAGE_SUFFIXES
            and not file.name.startswith(".")
        ]
    elif not path.exists():
        raise FileNotFoundError(f"batch not found: {path}")
    else:
        raise ValueError(f"{path}: expected a folder, a zip archive or an image file")
    return sorted(files, key=lambda file: file.name)


def patient_group(file_name: str) -> str:
    """Group slices that must share a patient when no metadata names one.

    The rule is conservative: a trailing slice or panel index (`%3`, `-12`, `_24`) is dropped, so
    crops of one figure and slices of one scan series fall into one group, and a publication's
    numbered images (`10.1148.radiol.2020200642-1` ... `-35`) form one group too.
    """
    stem = image_stem(PurePosixPath(file_name).name)
    stem = stem.split("%", 1)[0]
    grouped = re.sub(r"[-_ ]\d+$", "", stem)
    return grouped or stem


def parse_collection_date(text: str | None, year: int = 2020) -> str | None:
    """Parse LA-DNN's `month.day` dates (e.g. `5.14`, year 2020) or an ISO date; None when empty."""
    if text is None or not str(text).strip():
        return None
    value = str(text).strip()
    match = re.fullmatch(r"(\d{1,2})\.(\d{1,2})", value)
    try:
        if match:
            return date(year, int(match.group(1)), int(match.group(2))).isoformat()
        return date.fromisoformat(value).isoformat()
    except ValueError as err:
        raise ValueError(
            f"invalid collection date {value!r}: expected month.day or YYYY-MM-DD"
        ) from err


_SUBTYPE_WORDS = (
    ("carcinoma", "lung cancer"),
    ("cancer", "lung cancer"),
    ("adenocarcinoma", "lung cancer"),
    ("tumor", "lung cancer"),
    ("nodule", "nodule"),
    ("luna", "nodule"),
    ("pneumonia", "other pneumonia"),
    ("normal", "normal"),
)


def negative_subtype_of(*texts: str | None) -> str | None:
    """Guess the negative subtype (normal, lung cancer, nodule, other pneumonia) from names and sources."""
    joined = " ".join(text for text in texts if text).lower()
    for word, subtype in _SUBTYPE_WORDS:
        if word in joined:
            return subtype
    return None


def source_from_name(file_name: str) -> str | None:
    """Read a DOI from names such as `10.1148.radiol.2020200642-1.png` or `10.1148ryct.2020200196-p23-1.png`."""
    match = re.match(r"^(10\.\d{4,9})\.?([a-z]+)\.(\d+)", PurePosixPath(file_name).name)
    if not match:
        return None
    return f"doi:{match.group(1)}/{match.group(2)}.{match.group(3)}"
