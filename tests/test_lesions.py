"""Lesion spellings of the release, the split files and the later batch CSVs."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from ladnn.data.encoding import read_csv_any_encoding, read_text
from ladnn.data.lesions import LESIONS, UnknownLesionError, canonical_lesion, is_covid_header

SPELLINGS = [
    # Canonical codes, as in the official split files.
    ("GGO", "GGO"),
    ("Csld", "Csld"),
    ("CrPa", "CrPa"),
    ("AirBr", "AirBr"),
    ("InSepThi", "InSepThi"),
    # Cell values of the later batch CSVs.
    ("Aibr", "AirBr"),
    ("InSep", "InSepThi"),
    # Long headers of the release metadata and the batch CSVs.
    ("consolidation(Csld)", "Csld"),
    ("Crazy paving appearance(CrPa)", "CrPa"),
    ("air bronchograms(AirBr)", "AirBr"),
    ("interlobular septal thickening(InSepThi)", "InSepThi"),
    # Case, spacing and surrounding whitespace.
    ("ggo", "GGO"),
    (" Csld ", "Csld"),
    ("ground-glass opacity", "GGO"),
    ("crazy_paving", "CrPa"),
    ("consolidation ( Csld )", "Csld"),
]


def _label_csvs(datasets_dir: Path) -> list[Path]:
    paths = sorted((datasets_dir / "new-data").glob("*.csv"))
    paths += sorted((datasets_dir / "covid-ct" / "lesion-labels").glob("*.csv"))
    return paths


def _lesion_headers(path: Path) -> list[str]:
    """Return the header cells after the COVID column, up to the first empty cell."""
    text, _ = read_text(path)
    header = next(csv.reader(io.StringIO(text)))
    covid_index = next(i for i, cell in enumerate(header) if is_covid_header(cell))
    headers = []
    for cell in header[covid_index + 1 :]:
        if not cell.strip():
            break
        headers.append(cell)
    return headers


@pytest.mark.parametrize(("spelling", "code"), SPELLINGS)
def test_canonical_lesion_spellings(spelling, code):
    assert canonical_lesion(spelling) == code


def test_real_csvs_found(datasets_dir):
    paths = _label_csvs(datasets_dir)

    assert len(paths) == 6


def test_real_headers_map_to_codes(datasets_dir):
    for path in _label_csvs(datasets_dir):
        headers = _lesion_headers(path)
        codes = [canonical_lesion(header, source=str(path)) for header in headers]

        assert len(headers) == 5, path.name
        assert codes == list(LESIONS), path.name


def test_real_cells_match_headers(datasets_dir):
    """Every non-empty cell of a lesion column names the lesion of its header."""
    checked = 0
    for path in _label_csvs(datasets_dir):
        frame, _ = read_csv_any_encoding(path)
        for header in _lesion_headers(path):
            header_code = canonical_lesion(header, source=str(path))
            for cell in frame[header].dropna().unique():
                assert canonical_lesion(cell, source=str(path)) == header_code, (path.name, cell)
                checked += 1

    assert checked >= 15


def test_unknown_lesion_names_source():
    with pytest.raises(UnknownLesionError) as caught:
        canonical_lesion("pleural effusion", source="batch/meta.csv")

    assert "'pleural effusion'" in str(caught.value)
    assert "batch/meta.csv" in str(caught.value)


def test_unknown_code_in_brackets():
    with pytest.raises(UnknownLesionError) as caught:
        canonical_lesion("pleural effusion(PlEf)")

    assert "pleural effusion(PlEf)" in str(caught.value)


def test_unknown_lesion_is_value_error():
    with pytest.raises(ValueError):
        canonical_lesion("")


@pytest.mark.parametrize("header", ["CVD19", "C0VID19", "COVID-19", "covid"])
def test_covid_header_spellings(header):
    assert is_covid_header(header)


def test_lesion_not_covid_header():
    assert not is_covid_header("GGO")
