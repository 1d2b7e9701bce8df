"""The Markdown table writer every report uses."""
import pytest

from tgfr.markdown import table


def test_first_column_left_the_others_right_by_default():
    assert table(["method", "R@1", "mAP"], [["X-Modal", "10.0", "33.3"], ["text only", "5.0", ""]]) == (
        "| method | R@1 | mAP |\n"
        "|---|---:|---:|\n"
        "| X-Modal | 10.0 | 33.3 |\n"
        "| text only | 5.0 | |"
    )


def test_alignment_per_column_and_cells_that_would_break_the_table():
    text = table(["what", "error"], [["row", "a | b\nc"]], align=["l", "l"])
    assert text.splitlines() == ["| what | error |", "|---|---|", "| row | a \\| b c |"]


def test_header_only_table():
    assert table(["a", "b"], []) == "| a | b |\n|---|---:|"


@pytest.mark.parametrize("header, rows, align, message", [
    ([], [], None, "at least one column"),
    (["a", "b"], [["1"]], None, "row 0 has 1 cells, the header 2"),
    (["a", "b"], [], ["l"], "one of"),
    (["a", "b"], [], ["l", "c"], "one of"),
])
def test_rejects_mismatched_rows_and_alignments(header, rows, align, message):
    with pytest.raises(ValueError, match=message):
        table(header, rows, align)
