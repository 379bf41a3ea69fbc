"""How messages and tables show text read from files (prunewise.errors)."""

from __future__ import annotations

from prunewise.cli import main
from prunewise.errors import printable
from prunewise.report.tables import format_table


def test_characters_a_terminal_acts_on_are_escaped() -> None:
    assert printable("features.3 Ünïcode") == "features.3 Ünïcode"
    assert printable("a\x1b[2Jb\rc\u202ed") == "a\\x1b[2Jb\\rc\\u202ed"


def test_tables_and_one_line_errors_escape_names_from_files(tmp_path, capsys) -> None:
    table = format_table(["tensor"], [["conv\x1b]0;owned\x07.weight"]])
    assert "\x1b" not in table and "\\x1b]0;owned\\x07" in table
    crafted = tmp_path / "a\x1b[31mred.pt"
    assert main(["evaluate", "--checkpoint", str(crafted)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "a\\x1b[31mred.pt" in err
