"""The one-line form of an error that paralab's messages quote."""

from paralab.platform.errors import first_line


def test_first_line_keeps_the_first_line_only():
    assert first_line(ValueError("bad value\n  more detail\nTraceback ...")) == "bad value"
    assert first_line("\n  text\nnext") == "text"


def test_an_error_without_a_message_is_named_by_its_type():
    assert first_line(TimeoutError()) == "TimeoutError"
    assert first_line(OSError("  \n")) == "OSError"
    assert first_line("") == ""


def test_typed_prefixes_the_type():
    assert first_line(OSError("no route\nx"), typed=True) == "OSError: no route"
    assert first_line(KeyError(), typed=True) == "KeyError"
