import pytest
import torch

from nla.core.padding import pad, pad_token_id
from tests.fixtures.tiny import build_tokenizer


def test_right_and_left_padding_by_hand():
    ids, mask = pad([[5, 6, 7], [8]], value=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad([[5, 6, 7], [8]], value=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids.dtype == mask.dtype == torch.long


def test_all_empty_rows_still_have_width_one():
    ids, mask = pad([[], []], value=3)
    assert ids.tolist() == [[3], [3]] and mask.tolist() == [[0], [0]]


def test_bad_side_is_refused():
    with pytest.raises(ValueError, match="side must be 'right' or 'left'"):
        pad([[1]], value=0, side="middle")


def test_pad_id_prefers_pad_then_eos():
    tokenizer = build_tokenizer()
    assert pad_token_id(tokenizer) == tokenizer.convert_tokens_to_ids("<pad>")
    tokenizer.pad_token = None
    assert pad_token_id(tokenizer) == tokenizer.eos_token_id
