"""The kernel benchmark runs end to end on tiny shapes and reports what it measured."""

from __future__ import annotations

import pytest

from automix.bench import kernels as bench


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bench_main_small(backend: str, capsys, tmp_path) -> None:
    out = tmp_path / "k.md"
    rc = bench.main(["--shapes", "96x40", "--m", "1", "19", "--bits", "3", "4", "--group-size", "32",
                     "--backend", backend, "--min-time", "0.01", "--copy-mib", "4", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "copy bandwidth" in text
    rows = [line for line in text.splitlines() if line.startswith("| 96x40")]
    assert len(rows) == 4
    for line in rows:
        err = float(line.rstrip(" |").split("|")[-1])
        assert err < 1e-3  # the benchmarked path agrees with the dequantized reference
    assert "Command: `automix bench kernels" in out.read_text()


def test_bad_shape_is_reported() -> None:
    with pytest.raises(ValueError, match="IN_FEATURESxOUT_FEATURES"):
        bench.parse_shape("4096by4096")
