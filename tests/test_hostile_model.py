"""Hostile input to `atomfm model info`: a --set that is malformed, not YAML, of the wrong type or out of range is
refused with exit code 2, no traceback and a message naming the key."""

from __future__ import annotations

import pytest
from hostile import assert_refused, atomfm

BAD_SETS = {
    "not_key_value": ("lmax", "key.subkey=value"),
    "value_not_yaml": ("lmax=[", "lmax"),
    "value_unclosed_quote": ('activation="gate', "activation"),
    "lmax_a_word": ("lmax=abc", "lmax"),
    "lmax_a_fraction": ("lmax=1.5", "lmax"),
    "lmax_out_of_range": ("lmax=9", "lmax"),
    "channels_zero": ("channels=0", "channels"),
    "cutoff_a_word": ("cutoff=far", "cutoff"),
    "cutoff_negative": ("cutoff=-1", "cutoff"),
    "heads_a_number": ("heads=3", "heads"),
    "head_unknown": ("heads=[energy, telepathy]", "heads"),
    "head_options_a_number": ("head_options=3", "head_options"),
    "lora_a_number": ("lora=3", "lora"),
    "unknown_key": ("lmaxx=2", "lmaxx"),
    "long_range_without_charges": ("heads=[energy]", "long_range"),
    "num_heads_zero": ("num_heads=0", "num_heads"),
}


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_a_bad_set_is_refused_naming_the_key(case, capsys):
    item, named = BAD_SETS[case]
    assert_refused(atomfm(capsys, "model", "info", "tiny", "--set", item), named)


def test_an_unknown_size_is_refused_naming_the_sizes(capsys):
    assert_refused(atomfm(capsys, "model", "info", "galactic"), "galactic", "tiny")
