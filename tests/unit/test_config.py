"""Settings: one validated object; every bad value is refused with the setting's name and the value."""
import pytest

from pg_ext.config import FIELD_NAMES, FIELDS, INFOTEXT_KEYS, Settings, SettingsError


@pytest.mark.parametrize("values, field, shown", [
    ({"omega": 1.5}, "omega", "1.5"),
    ({"omega": "abc"}, "omega", "'abc'"),
    ({"omega": float("nan")}, "omega", "nan"),
    ({"omega": True}, "omega", "True"),
    ({"weak_prompt": "null"}, "weak_prompt", "'null'"),
    ({"start": 0.7, "end": 0.5}, "start", "0.7"),
    ({"start": 0.5, "end": 0.5}, "start", "0.5"),
    ({"enabled": "maybe"}, "enabled", "'maybe'"),
    ({"loras": 3}, "loras", "3"),
    ({"base_mode": "tiny"}, "base_mode", "'tiny'"),
    ({"omgea": 0.3}, "omgea", "0.3"),
])
def test_bad_values_name_the_setting_and_the_value(values, field, shown):
    with pytest.raises(SettingsError) as err:
        Settings.from_values(values)
    assert err.value.field == field and f"'{field}'" in str(err.value) and shown in str(err.value)


def test_positional_and_dict_arguments_agree():
    positional = Settings.from_positional([True, 0.3, "subject, other", "empty", 0.1, 0.9, False, "None", "exact"])
    as_dict = Settings.from_positional([{"enabled": True, "omega": 0.3, "loras": ["subject", "other"],
                                         "weak_prompt": "empty", "start": 0.1, "end": 0.9, "hires": False}, 0.5, ""])
    assert positional == as_dict
    assert positional.loras == ("subject", "other") and positional.base_checkpoint == ""


def test_missing_arguments_take_defaults_and_too_many_are_refused():
    defaults = Settings(omega=0.7)
    assert Settings.from_positional([True], defaults).omega == 0.7
    with pytest.raises(SettingsError, match="at most"):
        Settings.from_positional([True] * (len(FIELDS) + 1))


def test_strings_from_the_ui_or_infotext_are_parsed():
    s = Settings.from_values({"enabled": "True", "omega": "0.25", "hires": "False", "loras": '["a", "b"]'})
    assert s.enabled and s.omega == 0.25 and not s.hires and s.loras == ("a", "b")


def test_active_and_range():
    assert not Settings(enabled=True, omega=1.0).active() and Settings(enabled=True, omega=0.9).active()
    s = Settings(start=0.25, end=0.5)
    assert [s.in_range(f) for f in (0.0, 0.25, 0.49, 0.5)] == [False, True, True, False]
    assert Settings().in_range(1.0)


def test_infotext_without_pg_turns_it_off_and_keys_are_valid():
    assert Settings.from_infotext({"Steps": "20"}) == Settings(enabled=False)
    import re

    assert all(re.fullmatch(r"\w[\w \-/]+", key) for key in INFOTEXT_KEYS)
    assert len(FIELD_NAMES) == len(set(FIELD_NAMES)) == len(FIELDS)
