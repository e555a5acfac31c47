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
    # Seven hues a person tells apart in a slice view: every pair at least 28 degrees apart on the
    # colour wheel, each saturated and bright enough to show over grey CT.
    import colorsys

    hsv = [colorsys.rgb_to_hsv(*lab.color) for lab in HEART_LABELS]
    for i, (h1, s1, v1) in enumerate(hsv):
        assert s1 >= 0.5 and v1 >= 0.6, HEART_LABELS.labels[i].name
        for j, (h2, _, _) in enumerate(hsv[:i]):
            gap = min(abs(h1 - h2), 1 - abs(h1 - h2)) * 360
            assert gap >= 28, (HEART_LABELS.labels[i].name, HEART_LABELS.labels[j].name, gap)


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
