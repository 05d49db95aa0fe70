"""Personalization Guidance settings: one frozen, validated object and the single table of its fields.

Every edge of the extension (UI, REST API, infotext paste, X/Y/Z) goes through `Settings.from_values`,
so a bad value gets the same message wherever it comes from: it names the setting and quotes the value.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable, Mapping, Optional, Sequence

from .schedule import SCHEDULES, OmegaSchedule

WEAK_PROMPTS = ("negative", "empty")
BASE_MODES = ("exact", "low-memory")


class SettingsError(ValueError):
    """A setting has a value PG cannot use; the message names the setting and the value."""

    def __init__(self, field: str, value: Any, expected: str):
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"Personalization Guidance: setting '{field}' {expected}, got {value!r}")


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "on", "off", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "on", "1", "yes")
    raise SettingsError(name, value, "must be true or false")


def _as_fraction(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise SettingsError(name, value, "must be a number in [0, 1]")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(name, value, "must be a number in [0, 1]") from None
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise SettingsError(name, value, "must be a number in [0, 1]")
    return number


def _as_choice(choices: Sequence[str]) -> Callable[[str, Any], str]:
    def parse(name: str, value: Any) -> str:
        text = value.strip().lower() if isinstance(value, str) else value
        if text not in choices:
            raise SettingsError(name, value, "must be one of " + ", ".join(repr(c) for c in choices))
        return text

    return parse


def parse_name_list(value: Any) -> tuple[str, ...]:
    """'a, b' or ['a', 'b'] -> ('a', 'b'); used for the LoRA selection."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):  # a JSON list pasted from an infotext or an API client
            try:
                value = json.loads(text)
            except ValueError:
                raise SettingsError("loras", value, "must be a comma-separated list of LoRA names") from None
        else:
            value = text.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SettingsError("loras", value, "must be a comma-separated list of LoRA names")
    names = [v.strip() for v in value if v.strip()]
    return tuple(dict.fromkeys(names))


def _as_names(name: str, value: Any) -> tuple[str, ...]:
    return parse_name_list(value)


def _as_text(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SettingsError(name, value, "must be a checkpoint name (text)")
    text = value.strip()
    return "" if text.lower() == "none" else text


@dataclasses.dataclass(frozen=True)
class Field:
    """One setting: its API name, UI label, infotext key, default and parser."""

    name: str
    label: str
    infotext: Optional[str]  # None: not written (enabled = "PG omega" is present)
    default: Any
    parse: Callable[[str, Any], Any]
    help: str


LOW_MEMORY_BUDGET = 0.12  # low-memory base mode: each weight's factors take at most this share of its size

# The one place each control's help is written: UI tooltips, the Settings page and the README's table
# (tests/unit/test_docs.py keeps the README in step) all come from here.
FIELDS: tuple[Field, ...] = (
    Field("enabled", "Enable Personalization Guidance", None, False, _as_bool,
          "PG on/off (the accordion's header). When on, CFG's unconditional branch comes from a weak model "
          "between the base and your personalized model; ω = 1 is plain CFG."),
    Field("omega", "ω (weak model strength)", "PG omega", 0.5, _as_fraction,
          "1 = plain CFG; 0.4–0.6 balances subject and prompt, 0–0.3 for most subject fidelity (the paper's "
          "ranges; 0.5, the middle of its balanced range, is a safe start). The default can be changed in Settings."),
    Field("loras", "Personalization LoRAs", "PG LoRAs", (), _as_names,
          "Comma-separated names (prompt name, file name or alias) of the LoRAs in the prompt that carry the "
          "subject; empty = every LoRA in the prompt. The others (a style, a detail tweaker) keep full strength "
          "in both branches."),
    Field("weak_prompt", "Weak branch prompt", "PG weak prompt", "negative", _as_choice(WEAK_PROMPTS),
          "'negative': the weak model sees your negative prompt, so ω = 1 is exactly the CFG you know; "
          "'empty': the paper's null prompt."),
    Field("start", "Start at", "PG start", 0.0, _as_fraction,
          "Fraction of the sampling steps at which PG starts; plain CFG before."),
    Field("end", "End at", "PG end", 1.0, _as_fraction,
          "Fraction of the sampling steps after which PG stops; plain CFG after. Must be above 'Start at'."),
    Field("hires", "Also in the hires. fix pass", "PG hires", True, _as_bool,
          "Run PG in the hires. fix second pass too (the default can be changed in Settings)."),
    Field("base_checkpoint", "Base checkpoint (DreamBooth)", "PG base", "", _as_text,
          "For a DreamBooth checkpoint: the checkpoint it was trained from (title, name or short hash from the "
          "WebUI's list); empty or None = LoRA mode only. With a LoRA in the prompt too, the weak branch "
          "interpolates both."),
    Field("base_mode", "Base checkpoint mode", "PG base mode", "exact", _as_choice(BASE_MODES),
          "'exact': the weak rows use θ_ω exactly (memory: the UNet weights that differ, once more); "
          f"'low-memory': a low-rank approximation of θ' − θ in at most {LOW_MEMORY_BUDGET:.0%} of the UNet's "
          "memory, its error logged."),
    # appended after the fields above: positional API arguments and infotext keys are append-only
    Field("schedule", "ω schedule", "PG schedule", "constant", _as_choice(SCHEDULES),
          "'constant': ω at every step; 'linear': ω moves in a straight line from ω (at 'Start at') to "
          "'ω at the end' (at 'End at'); 'auto': no ω to pick (ω and 'ω at the end' are ignored): plain CFG "
          "for the first half of the steps, where layout and prompt are decided, then ω = 0, where the subject's "
          "details form; the CFG scale alone sets subject vs prompt. Plain CFG outside the range always."),
    Field("omega_end", "ω at the end", "PG omega end", 0.0, _as_fraction,
          "The 'linear' schedule's ω at 'End at' (ignored by 'constant' and 'auto'). Below ω: the weak branch unlearns "
          "more of the subject as the details form (more subject); above ω: less."),
)
NOTE_KEY = "PG note"  # one line when PG was asked for but ran as plain CFG, and why
INFOTEXT_KEYS: tuple[str, ...] = tuple(f.infotext for f in FIELDS if f.infotext) + (NOTE_KEY,)
FIELD_BY_NAME: dict[str, Field] = {f.name: f for f in FIELDS}
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)


@dataclasses.dataclass(frozen=True)
class Settings:
    """The effective PG settings of one job; build it with `from_values`, never by hand from raw input."""

    enabled: bool = False
    omega: float = 0.5
    loras: tuple[str, ...] = ()
    weak_prompt: str = "negative"
    start: float = 0.0
    end: float = 1.0
    hires: bool = True
    base_checkpoint: str = ""
    base_mode: str = "exact"
    schedule: str = "constant"
    omega_end: float = 0.0

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise SettingsError("start", self.start, f"must be below 'end' ({self.end})")

    @classmethod
    def from_values(cls, values: Mapping[str, Any], defaults: "Settings | None" = None) -> "Settings":
        """Validated settings from a name -> value mapping; missing names keep `defaults`."""
        unknown = [k for k in values if k not in FIELD_BY_NAME]
        if unknown:
            raise SettingsError(str(unknown[0]), values[unknown[0]],
                                "is not a setting; known settings: " + ", ".join(FIELD_NAMES))
        base = dataclasses.asdict(defaults or cls())
        parsed = {name: FIELD_BY_NAME[name].parse(name, value) for name, value in values.items()}
        return cls(**{**base, **parsed})

    @classmethod
    def from_positional(cls, args: Sequence[Any], defaults: "Settings | None" = None) -> "Settings":
        """Settings from the script's positional arguments (UI order = `FIELD_NAMES`).

        A dict as the first argument is read as name -> value (the REST API's friendly form); the values
        after it are the defaults the WebUI fills in for missing arguments and are ignored.
        """
        if len(args) >= 1 and isinstance(args[0], Mapping):
            return cls.from_values(args[0], defaults)
        if len(args) > len(FIELDS):
            raise SettingsError("args", list(args), f"takes at most {len(FIELDS)} positional values ({', '.join(FIELD_NAMES)})")
        return cls.from_values(dict(zip(FIELD_NAMES, args)), defaults)

    @property
    def omega_schedule(self) -> OmegaSchedule:
        """ω per step of these settings (pg_ext.schedule)."""
        return OmegaSchedule(self.schedule, self.omega, self.omega_end, self.start, self.end)

    def active(self) -> bool:
        """Whether PG changes anything: enabled and some step's ω below 1."""
        return self.enabled and self.omega_schedule.lowest() < 1.0

    def in_range(self, fraction_done: float) -> bool:
        """Whether a step at `fraction_done` of the sampling run is inside [start, end]."""
        return self.omega_schedule.in_range(fraction_done)

    def omega_at(self, fraction_done: float) -> float:
        """ω of the weak branch at a step beginning at `fraction_done` of the run; 1.0 = plain CFG."""
        return self.omega_schedule.omega_at(fraction_done)

    def infotext(self) -> dict[str, Any]:
        """The infotext keys of these settings (only meaningful when PG ran)."""
        out: dict[str, Any] = {
            "PG omega": round(self.omega, 4),
            "PG weak prompt": self.weak_prompt,
        }
        if self.loras:
            out["PG LoRAs"] = ", ".join(self.loras)
        if (self.start, self.end) != (0.0, 1.0):
            out["PG start"], out["PG end"] = round(self.start, 4), round(self.end, 4)
        if not self.hires:
            out["PG hires"] = False
        if self.base_checkpoint:
            out["PG base"] = self.base_checkpoint
            out["PG base mode"] = self.base_mode
        if self.schedule != "constant":  # nothing new for a constant ω: old infotexts stay as they were
            out["PG schedule"] = self.schedule
            if self.schedule == "linear":  # the only kind that reads it
                out["PG omega end"] = round(self.omega_end, 4)
        return out

    @classmethod
    def from_infotext(cls, params: Mapping[str, str]) -> "Settings":
        """Settings from a parsed infotext; without 'PG omega' the result is disabled."""
        if "PG omega" not in params:
            return cls(enabled=False)
        values: dict[str, Any] = {"enabled": True}
        for f in FIELDS:
            value = infotext_value(params, f.infotext) if f.infotext else None
            if value is not None:
                values[f.name] = value
        return cls.from_values(values)


def infotext_value(params: Mapping[str, str], key: str, default: Any = None) -> Any:
    """`params[key]`, also when the WebUI's parser split a value shaped like "512x768" into key-1, key-2.

    The WebUI reads every "NxM" value as a size (a LoRA named "0x0" comes back as 'PG LoRAs-1': '0',
    'PG LoRAs-2': '0'); put it back together.
    """
    if key in params:
        return params[key]
    if f"{key}-1" in params and f"{key}-2" in params:
        return f"{params[key + '-1']}x{params[key + '-2']}"
    return default


OVERRIDES_ATTR = "personalization_guidance"  # on a processing object: name -> value, read by the script


def request_pg(p: Any, **values: Any) -> Settings:
    """Ask for PG on a WebUI processing object from another extension or script.

    Validates now (raises SettingsError), stores the values on `p`; the script applies them in its
    `process` over the UI/API arguments. `request_pg(p, omega=0.4, loras="my_subject")` turns PG on.
    """
    merged = {**dict(getattr(p, OVERRIDES_ATTR, None) or {}), "enabled": True, **values}
    settings = Settings.from_values(merged)
    setattr(p, OVERRIDES_ATTR, merged)
    return settings
