"""Tests for benchmarks/_vit_profile.py: the stages, the operator deltas, the table."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import load_benchmark

prof = load_benchmark("_vit_profile")


def test_op_delta_lists_added_operators_most_frequent_first():
    before = ("ADD", "MUL")
    after = ("ADD", "MUL", "FULLY_CONNECTED", "ADD", "ADD")
    assert prof._op_delta(before, after) == "ADD x2, FULLY_CONNECTED"
    assert prof._op_delta(after, after) == ""


def test_stages_cut_block_zero_by_stage_then_whole_blocks_then_the_head():
    ends = [end for end, _ in prof._stages(3)]
    assert ends == [
        "pos_add",
        "block0_ln1",
        "block0_attn",
        "block0_attn_add",
        "block0_ln2",
        "block0_mlp_up",
        "block0_mlp_down",
        "block0_mlp_add",
        "block1_mlp_add",
        "block2_mlp_add",
        None,
    ]


@pytest.mark.slow
def test_profile_stage_operators_add_up_to_the_whole_file():
    T = load_benchmark("_transformers")
    model = T.vit(blocks=2, dim=16, heads=2, mlp=32, patch=7)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    lines = prof.profile({"dense": model}, x, blocks=2, rounds=1)
    assert lines[0] == "| stage | dense (us) | dense operators |"
    rows = [line.split(" | ") for line in lines[2:]]
    assert len(rows) == len(prof._stages(2)) + 1
    total = 0
    for row in rows[:-1]:
        for op in filter(None, row[2].rstrip(" |").split(", ")):
            match = re.fullmatch(r"([A-Z_0-9]+)(?: x(\d+))?", op)
            total += int(match.group(2) or 1)
    whole = int(re.match(r"(\d+) operators", rows[-1][2]).group(1))
    assert total == whole
