"""``nla.data.corpus_lines``: the first unreadable line of a corpus file, named; sound files pass."""

from __future__ import annotations

from nla.data.corpus_lines import first_bad_line


def test_sound_lines_pass_a_byte_order_mark_and_surrogate_pairs_included(tmp_path):
    path = tmp_path / "docs.jsonl"
    # A pair of surrogates escapes one character outside the BMP: text, unlike a lone one.
    path.write_bytes(b'\xef\xbb\xbf{"text": "a wheel"}\n\n{"text": "a wave \\ud83c\\udf0a"}\n')
    assert first_bad_line([path], "json") is None


def test_the_first_bad_line_of_the_first_bad_file_is_named(tmp_path):
    sound, bad = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    sound.write_text('{"text": "a wheel"}\n')
    bad.write_text('{"text": "a wheel"}\n{"text": "a \\udc00 stone"}\n{"text": \n')
    assert first_bad_line([sound, bad], "json") == (
        f"{bad} line 2 holds a lone surrogate (\\udc00), which is not text; fix or remove that line")


def test_text_files_are_checked_for_utf8_only(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"a miller's wheel\n{not json either\nsailors \xe9 waves\n")
    assert first_bad_line([path], "text") == (
        f"{path} line 3 is not UTF-8 text (byte 9 of the line is 0xe9); fix or remove that line")
    assert first_bad_line([path], "parquet") is None, "binary files have no lines to name"


def test_a_json_document_is_read_whole(tmp_path):
    path = tmp_path / "docs.json"
    path.write_text('[\n {"text": "a wheel"},\n {"text": "a \\ud800 stone"}\n]\n')
    assert first_bad_line([path], "json") == (
        f"{path} holds a lone surrogate (\\ud800), which is not text; fix that string")
