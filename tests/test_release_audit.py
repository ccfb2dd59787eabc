"""The near-duplicate audit of the whole COVID-CT release, run on the real release."""

from __future__ import annotations

import pytest

from ladnn.validation.audit import (
    OTHER_PATIENT_SAME_SPLIT,
    OTHER_SPLIT,
    SAME_PATIENT,
    audit_release,
    main,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pairs(release_dir):
    return audit_release(release_dir, max_distance=4)


def test_pair_counts_by_relation(pairs):
    """The counts that docs/validation.md records for 4 and 2 bits."""
    close = pairs[pairs["distance"] <= 2]

    assert pairs["relation"].value_counts().to_dict() == {
        OTHER_PATIENT_SAME_SPLIT: 15,
        SAME_PATIENT: 7,
        OTHER_SPLIT: 4,
    }
    assert close["relation"].value_counts().to_dict() == {
        OTHER_PATIENT_SAME_SPLIT: 2,
        SAME_PATIENT: 1,
        OTHER_SPLIT: 1,
    }


def test_cross_split_pair_names_both_files(pairs):
    closest = pairs[pairs["relation"] == OTHER_SPLIT].iloc[0]

    assert closest["distance"] == 2
    assert {closest["first_file"], closest["second_file"]} == {
        "CT_COVID/2020.03.22.20040782-p24-1533-2.png",
        "CT_COVID/2020.03.22.20040782-p25-1541.png",
    }
    assert {closest["first_split"], closest["second_split"]} == {"train", "val"}


def test_command_writes_csv(release_dir, tmp_path, capsys):
    output = tmp_path / "pairs.csv"

    assert main([str(release_dir), "--max-distance", "0", "--csv", str(output)]) == 0

    assert output.read_text().splitlines()[0].startswith("first_file,second_file,distance")
    assert len(output.read_text().splitlines()) == 1
    assert "746" in capsys.readouterr().out
