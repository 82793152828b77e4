"""``differences``: a store or settings mismatch names each setting, nested ones by dotted name."""

from __future__ import annotations

from sppdet.cache.fingerprint import compare_settings, differences, fingerprint, flatten_settings


def test_a_nested_mismatch_names_each_setting_with_both_values() -> None:
    stored = {"features": {"scales": [480, 688], "trunk": {"name": "zf5", "fc": 4096}}, "k": 1}
    asked = {"features": {"scales": (480,), "trunk": {"name": "zf5", "fc": 1024}}, "k": 1}
    assert differences(asked, stored) == [
        "features.scales: [480, 688] (stored) vs [480] (asked)",
        "features.trunk.fc: 4096 (stored) vs 1024 (asked)",
    ]


def test_a_setting_on_one_side_only_and_a_section_replaced_by_a_value() -> None:
    assert compare_settings({"a": {"b": 1}}, {"a": 2, "c": [1]}, "then", "now") == [
        "a: None (then) vs 2 (now)",
        "a.b: 1 (then) vs None (now)",
        "c: None (then) vs [1] (now)",
    ]


def test_settings_equal_as_the_fingerprint_sees_them_have_no_differences() -> None:
    tupled = {"s": {"scales": (480, 688), "flip": True}}
    listed = {"s": {"scales": [480, 688], "flip": True}}
    assert fingerprint(tupled) == fingerprint(listed)
    assert differences(tupled, listed) == []
    assert flatten_settings(tupled) == {"s.scales": [480, 688], "s.flip": True}
