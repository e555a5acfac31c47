"""The heart label table: values, names, MM-WHS values, colours, SNOMED CT codes, round trip."""

from __future__ import annotations

import json

from gvslcore.labels import (
    ANATOMICAL_STRUCTURE,
    HEART_LABELS,
    Code,
    LabelInfo,
    LabelTable,
)

# value -> (name, MM-WHS value, SNOMED CT type code), as DESIGN.md and Slicer's terminology list them.
EXPECTED = {
    1: ("left ventricle", 500, "87878005"),
    2: ("right ventricle", 600, "53085002"),
    3: ("left atrium", 420, "82471001"),
    4: ("right atrium", 550, "73829009"),
    5: ("left ventricular myocardium", 205, "74281007"),
    6: ("ascending aorta", 820, "54247002"),
    7: ("pulmonary artery", 850, "81040000"),
}


def test_values_are_one_to_seven_and_unique():
    assert HEART_LABELS.values == [1, 2, 3, 4, 5, 6, 7]
    assert len(set(HEART_LABELS.values)) == len(HEART_LABELS) == 7
    assert HEART_LABELS.num_classes == 8


def test_names_source_values_and_codes():
    for lab in HEART_LABELS:
        name, mmwhs, sct = EXPECTED[lab.value]
        assert lab.name == name
        assert HEART_LABELS.name_of(lab.value) == name
        assert lab.source_value == mmwhs
        assert lab.category == ANATOMICAL_STRUCTURE
        assert lab.type is not None and lab.type.scheme == "SCT" and lab.type.value == sct
        assert lab.type.meaning


def test_colors_are_rgb_in_unit_range_and_distinct():
    for lab in HEART_LABELS:
        assert len(lab.color) == 3
        assert all(isinstance(c, float) and 0.0 <= c <= 1.0 for c in lab.color)
    # Slicer's recommended colours, given as 0..255 in its terminology files.
    assert [round(c * 255) for c in HEART_LABELS.labels[0].color] == [152, 55, 13]
    assert [round(c * 255) for c in HEART_LABELS.labels[6].color] == [0, 122, 171]
    assert len({lab.color for lab in HEART_LABELS}) == 7


def test_round_trip_through_json():
    items = json.loads(json.dumps(HEART_LABELS.to_list()))
    back = LabelTable.from_list(items)
    assert back == HEART_LABELS
    assert json.dumps(back.to_list()) == json.dumps(HEART_LABELS.to_list())


def test_from_dict_defaults():
    lab = LabelInfo.from_dict({"value": "3", "name": "x"})
    assert lab == LabelInfo(3, "x", (0.5, 0.5, 0.5), ANATOMICAL_STRUCTURE, None, None)
    assert LabelInfo.from_dict(lab.to_dict()) == lab
    assert Code("SCT", "1", "a") == Code(**Code("SCT", "1", "a").__dict__)
