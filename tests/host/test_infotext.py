"""Every PG setting round-trips through an infotext written and parsed by the WebUI's rules (our double's
infotext_utils: quoting and parsing as tests/webui/test_host_contract.py checks them live)."""
from hypothesis import given, strategies as st

from modules.infotext_utils import parse_generation_parameters, quote
from pg_ext.config import Settings


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789-", min_size=1, max_size=12)
settings_strategy = st.builds(
    lambda omega, loras, weak, bounds, hires, base, mode, schedule, omega_end: Settings(
        enabled=True, omega=omega, loras=tuple(dict.fromkeys(loras)), weak_prompt=weak, start=bounds[0],
        end=bounds[1], hires=hires, base_checkpoint=base, base_mode=mode if base else "exact",  # mode only matters with a base
        schedule=schedule, omega_end=omega_end if schedule != "constant" else 0.0),  # omega_end only with a ramp
    st.floats(0, 1).map(lambda x: round(x, 4)), st.lists(names, max_size=3), st.sampled_from(["negative", "empty"]),
    st.tuples(st.floats(0, 0.5), st.floats(0.51, 1)).map(lambda t: (round(t[0], 4), round(t[1], 4))),
    st.booleans(), st.one_of(st.just(""), names.map(lambda n: n + ".safetensors [0123456789]")),
    st.sampled_from(["exact", "low-memory"]), st.sampled_from(["constant", "linear"]),
    st.floats(0, 1).map(lambda x: round(x, 4)))


@given(settings_strategy)
def test_every_setting_round_trips_through_infotext(settings):
    text = "a photo\n" + ", ".join(["Steps: 20", "Sampler: Euler"] + [f"{k}: {quote(v)}" for k, v in settings.infotext().items()])
    assert Settings.from_infotext(parse_generation_parameters(text)) == settings
