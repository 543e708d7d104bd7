"""Name -> object registries (nas.registry) and the did-you-mean helper (nas.errors)."""

from __future__ import annotations

import pytest

from nas.errors import UsageError, did_you_mean
from nas.registry import Registry


def test_register_get_contains_keys():
    reg = Registry("widget")

    @reg.register()
    class Foo:
        pass

    @reg.register("bar")
    def make_bar():
        return 1

    assert reg.get("Foo") is Foo and reg.get("bar") is make_bar
    assert "bar" in reg and "baz" not in reg
    assert reg.keys() == ["Foo", "bar"] and list(reg) == ["Foo", "bar"]
    with pytest.raises(KeyError, match="widget 'bar' is already registered"):
        reg.register("bar")(make_bar)
    with pytest.raises(UsageError, match=r"unknown widget 'baz' \(did you mean 'bar'\?\); known: Foo, bar"):
        reg.get("baz")


def test_did_you_mean():
    assert did_you_mean("trails", ["trials", "seed"]) == " (did you mean 'trials'?)"
    assert did_you_mean("zzz", ["trials"]) == ""
    assert did_you_mean("lamda", ["lambda"], prefix="search.penalty.") == \
        " (did you mean 'search.penalty.lambda'?)"
