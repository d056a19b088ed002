"""Finding a kernel function's code in /proc/kallsyms."""

from __future__ import annotations

from pathlib import Path

import pytest

from ebpf.kallsyms import function_range

TABLE = """\
ffffffff81e93180 T __pfx_sk_stream_wait_connect
ffffffff81e93190 T sk_stream_wait_connect
ffffffff81e93190 t sk_stream_wait_connect.alias
ffffffff81e933a0 T __pfx_sk_stream_wait_close
"""


def test_a_function_ends_where_the_next_symbol_begins(tmp_path: Path) -> None:
    (tmp_path / "kallsyms").write_text(TABLE)
    assert function_range("sk_stream_wait_connect", tmp_path / "kallsyms") == (0xFFFFFFFF81E93190, 0xFFFFFFFF81E933A0)


@pytest.mark.parametrize("table, why", [
    (TABLE.replace(" sk_stream_wait_connect\n", " other\n"), "no kernel symbol"),
    ("".join("0" * 16 + line[16:] for line in TABLE.splitlines(keepends=True)), "hidden"),
])
def test_a_missing_or_hidden_function_is_named_with_the_file(tmp_path: Path, table: str, why: str) -> None:
    (tmp_path / "kallsyms").write_text(table)
    with pytest.raises(LookupError, match=why) as err:
        function_range("sk_stream_wait_connect", tmp_path / "kallsyms")
    assert str(tmp_path / "kallsyms") in str(err.value)


def test_this_kernel_has_the_function_the_api_checks_look_for() -> None:
    start, end = function_range("sk_stream_wait_connect")
    assert 0 < start < end
