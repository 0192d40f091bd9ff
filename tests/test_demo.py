"""`tfprune demo` through the command line entry point."""

from __future__ import annotations

import re

from tfprune import cli


def test_demo_prunes_and_reports(tmp_path, capsys):
    assert cli.main(["demo", "--epochs", "5", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    dense = float(re.search(r"Dense model: test accuracy (\d\.\d+)", out).group(1))
    pruned = float(re.search(r"unstructured sparsity.*test accuracy (\d\.\d+)", out).group(1))
    assert dense > 0.7 and pruned > 0.7  # chance is 0.1; the default 8 epochs give ~0.98
    # The stripped model's table: the conv2 row shows 80 % of its weights gone.
    conv2 = [line for line in out.splitlines() if line.startswith("conv2 ")]
    assert conv2[0].split()[2:5] == ["18,432", "18,432", "0.0%"]
    assert conv2[1].split()[2:5] == ["18,432", "3,686", "80.0%"]
    # The shrunk model's table comes under its heading, with a smaller conv2.
    heading = out.index("== Channel pruning")
    assert out.index("\nconv2 ", heading) < out.index("params 85,354 -> ", heading)
    assert int(conv2[2].split()[2].replace(",", "")) < 18_432
    # Dense and shrunk models exported side by side, all measured in LiteRT.
    table = out[out.index("== Export to") :].splitlines()[2:6]
    rows = {" ".join(r.split()[:2]): int(r.split()[2].replace(",", "")) for r in table}
    assert list(rows) == ["dense float32", "dense int8", "shrunk float32", "shrunk int8"]
    assert rows["shrunk int8"] < rows["dense int8"] < rows["dense float32"]
    assert rows["shrunk float32"] < rows["dense float32"]
    assert (tmp_path / "digits_shrunk_int8.cc").exists()
    assert "eager" not in out
