"""Encoding detection on the GBK release metadata and on UTF-8 and Western CSVs."""

from __future__ import annotations

from pathlib import Path

import pytest

from ladnn.data.encoding import detect_encoding, read_csv_any_encoding, read_text

# Caption text from COVID-CT-MetaInfo_new.csv with GBK punctuation: an en dash and curly quotes.
EN_DASH_CAPTION = "CT images of a 72\u2013year-old woman"
QUOTED_CAPTION = "The multiple \u201cground-glass\u201d lesions"

WESTERN_CSV = (
    "name,city,note\nJosé,São Paulo,café crème\nFrançois,Zürich,naïve résumé\nMüller,Köln,Straße\n"
)
UNICODE_CSV = "imgname,caption\nslice.png,\u201cground-glass\u201d opacity \u2265 50 %\n"


@pytest.fixture(scope="module")
def meta_info_path(release_dir: Path) -> Path:
    return release_dir / "lesion-labels" / "COVID-CT-MetaInfo_new.csv"


def test_gbk_metadata_not_utf8(meta_info_path):
    with pytest.raises(UnicodeDecodeError):
        meta_info_path.read_bytes().decode("utf-8")


def test_gbk_metadata_detected_gb18030(meta_info_path):
    assert detect_encoding(meta_info_path.read_bytes()) == "gb18030"


def test_gbk_metadata_punctuation_decoded(meta_info_path):
    text, encoding = read_text(meta_info_path)

    assert encoding == "gb18030"
    assert EN_DASH_CAPTION in text
    assert QUOTED_CAPTION in text


def test_gbk_metadata_csv_caption(meta_info_path):
    frame, encoding = read_csv_any_encoding(meta_info_path)
    captions = frame.iloc[:, 8].dropna()

    assert encoding == "gb18030"
    assert "C0VID19" in frame.columns
    assert captions.str.contains(EN_DASH_CAPTION, regex=False).sum() >= 1


def test_gbk_chinese_detected_gb18030():
    text = "文件,诊断\nslice.png,新冠肺炎\n"

    assert detect_encoding(text.encode("gbk")) == "gb18030"


@pytest.mark.parametrize(
    "text",
    ["imgname,note\nslice.png,无\n", "imgname,GGO,note\na.png,1,有\nb.png,0,无\n"],
    ids=["one-cell", "two-cells"],
)
def test_gbk_single_ideographs_detected_gb18030(text):
    """A cell holding one ideograph and nothing else is Chinese, though cp1252 also decodes it."""
    data = text.encode("gbk")

    assert detect_encoding(data) == "gb18030"
    assert data.decode("gb18030") == text


def test_utf8_detected():
    assert detect_encoding(UNICODE_CSV.encode("utf-8")) == "utf-8"


def test_utf8_bom_detected():
    assert detect_encoding(UNICODE_CSV.encode("utf-8-sig")) == "utf-8-sig"


def test_ascii_detected_utf8():
    assert detect_encoding(b"imgname,CVD19\nslice.png,CVD19\n") == "utf-8"


def test_cp1252_not_gb18030():
    data = WESTERN_CSV.encode("cp1252")

    encoding = detect_encoding(data)

    assert encoding != "gb18030"
    assert data.decode(encoding) == WESTERN_CSV


@pytest.mark.parametrize(
    "text",
    [
        "imgname,note\na.png,Hélène\n",
        "name\néléphant\n",
        "city\nAlmería\n",
        "imgname,caption\nslice.png,à la carte\n",
    ],
    ids=["french-name", "french-word", "spanish-city", "french-phrase"],
)
def test_short_cp1252_decoded_exactly(text):
    """Short Western CSVs: a single name or phrase with accents, encoded as cp1252."""
    data = text.encode("cp1252")

    encoding = detect_encoding(data)

    assert encoding != "gb18030"
    assert data.decode(encoding) == text


@pytest.mark.parametrize(
    ("encoding", "expected"),
    [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("cp1252", "cp1252")],
)
def test_read_csv_any_encoding(tmp_path, encoding, expected):
    path = tmp_path / "meta.csv"
    path.write_bytes(WESTERN_CSV.encode(encoding))

    frame, detected = read_csv_any_encoding(path)

    assert detected == expected
    assert list(frame.columns) == ["name", "city", "note"]
    assert frame["name"].tolist() == ["José", "François", "Müller"]
    assert frame.loc[1, "note"] == "naïve résumé"


def test_read_csv_empty_cells_missing(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_text("imgname,CVD19,GGO\nslice.png,CVD19,\n", encoding="utf-8")

    frame, _ = read_csv_any_encoding(path)

    assert frame.loc[0, "CVD19"] == "CVD19"
    assert frame["GGO"].isna().all()


def test_read_csv_empty_file_rejected(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")

    with pytest.raises(ValueError) as caught:
        read_csv_any_encoding(path)

    assert str(path) in str(caught.value)
