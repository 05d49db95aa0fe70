"""The README's controls table is the FIELDS table: labels, defaults and help cannot drift apart.

On a failure the message carries the table to paste into README.md.
"""
import json
import os

from pg_ext.config import FIELDS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")


def _default(value) -> str:
    if isinstance(value, tuple):
        value = ", ".join(value)
    return f"`{json.dumps(value) if isinstance(value, (bool, str)) and value in (True, False, '') else value}`"


def controls_table() -> str:
    rows = ["| # | API name | UI label | default | meaning |", "|---|---|---|---|---|"]
    for i, field in enumerate(FIELDS):
        rows.append(f"| {i} | `{field.name}` | {field.label} | {_default(field.default)} | {field.help} |")
    return "\n".join(rows)


def test_readme_controls_table_is_generated_from_fields():
    with open(README, encoding="utf-8") as f:
        readme = f.read()
    table = controls_table()
    assert table in readme, "README.md's controls table differs from pg_ext.config.FIELDS; paste:\n" + table
