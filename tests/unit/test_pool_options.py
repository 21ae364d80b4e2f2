"""The pool's options are stated once (otpy_pool._pool_options.OPTIONS):
``Pool.start_link``'s explicit keyword signature (kept for users and type
checkers), ``Pool.child_spec``'s defaults, ``Options`` and docs/pool.md's
table are held to it here, so none of them can drift."""

from __future__ import annotations

import dataclasses
import inspect
import re

import pytest

from otpy_pool import Pool, Worker
from otpy_pool._pool_options import DEFAULTS, OPTIONS, Options

from helpers import ROOT


class Plain(Worker):
    pass


def test_start_links_keywords_are_the_options_with_their_defaults():
    parameters = inspect.signature(Pool.start_link).parameters.values()
    keywords = [(p.name, p.default) for p in parameters
                if p.kind is p.KEYWORD_ONLY and p.name != "name"]
    assert keywords == [(option.name, option.default) for option in OPTIONS]


def test_child_spec_takes_the_same_options_with_the_same_defaults():
    spec = Pool.child_spec(Plain, name="defaults")
    checked = {option.name: option.check(option.default, option.name) for option in OPTIONS}
    checked["max_concurrency"] = Plain.max_concurrency  # None: the class's
    assert {name: getattr(spec.args[0], name) for name in DEFAULTS} == checked
    with pytest.raises(TypeError, match="unknown pool option"):
        Pool.child_spec(Plain, name="x", colour="red")


def test_options_has_a_field_per_option():
    fields = [field.name for field in dataclasses.fields(Options)]
    assert fields == ["worker", "args", "kwargs", "name", *DEFAULTS, "init_timeout",
                      "shutdown_timeout"]
    assert Options.__module__ == "otpy_pool._pool_options"  # pickled by reference


@pytest.mark.parametrize("option", OPTIONS, ids=lambda option: option.name)
def test_every_rule_refuses_a_bool_and_names_its_option(option):
    if option.name == "lazy":
        bad = 1  # the one bool option: anything else is refused
    else:
        bad = True  # never a count, a number of seconds, a strategy or a backoff
    with pytest.raises((TypeError, ValueError), match=option.name):
        option.check(bad, option.name)


def test_the_docs_table_lists_every_option():
    text = (ROOT / "docs" / "pool.md").read_text()
    table = text[text.index("## Options"):].split("\n\n")[1]
    documented = set(re.findall(r"^\| `(\w+)`(?: / `(\w+)`)?", table, re.M))
    names = {name for pair in documented for name in pair if name} - {"name"}  # not an option
    assert names == set(DEFAULTS), names ^ set(DEFAULTS)
