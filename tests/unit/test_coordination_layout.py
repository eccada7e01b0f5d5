"""The gateway names each Redis key once: keys.py for Python, prelude.lua for the scripts.

The fixed keys of the ``KEY`` table in ``prelude.lua`` are those of
``coordination/keys.py``; no script writes a key name of its own, nor arq's
layout outside the prelude; every script file has its KEYS/ARGV header.
"""

from __future__ import annotations

import re
from pathlib import Path

from amt_ingest.coordination import keys
from amt_ingest.coordination.scripts import source

COORDINATION = Path(keys.__file__).parent


def lua_key_table() -> dict[str, str]:
    prelude = (COORDINATION / "prelude.lua").read_text()
    table = re.search(r"local KEY = \{(.*?)\n\}", prelude, re.S)
    assert table, "prelude.lua has no KEY table"
    return dict(re.findall(r"(\w+) = '([^']+)'", table.group(1)))


def test_the_scripts_fixed_keys_are_keys_py():
    python = {
        value
        for name, value in vars(keys).items()
        if name.isupper() and isinstance(value, str) and value.startswith("amt:")
    }
    assert set(lua_key_table().values()) <= python
    assert set(lua_key_table().values()) >= {
        keys.PENDING,
        keys.JOB_SEQUENCE,
        keys.OPEN_JOB,
        keys.FENCE_SEQUENCE,
        keys.STATS,
        keys.RETRYING,
        keys.ONE_PATH,
        keys.LAGS,
    }


def test_no_script_spells_a_key_or_arqs_layout_itself():
    for script in COORDINATION.glob("*.lua"):
        if script.name == "prelude.lua":
            continue
        text = script.read_text()
        assert "'amt:" not in text and '"amt:' not in text, script.name
        assert "'arq:" not in text and '"arq:' not in text, script.name


def test_every_script_says_what_it_takes_and_returns():
    for script in COORDINATION.glob("*.lua"):
        if script.name == "prelude.lua":
            continue
        head = script.read_text().split("\n\n")[0]
        assert "KEYS" in head and "Returns" in script.read_text(), script.name


def test_a_script_is_the_prelude_then_the_file():
    assert source("mark.lua").startswith((COORDINATION / "prelude.lua").read_text())
    assert source("unlease.lua", prelude=False) == (COORDINATION / "unlease.lua").read_text()
