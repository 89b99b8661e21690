"""The loop detector of the held-out check (posttrain/evaluation/loops.py): an answer loops when a word 3-gram
occurs three or more times, or one word four or more times in a row; words are compared lower-cased, without
punctuation."""

from posttrain.evaluation.loops import has_loop, words


def test_a_3gram_three_times_is_a_loop():
    assert has_loop("a compass needle points north, a compass needle points south, and a compass needle spins")


def test_a_3gram_twice_is_not_a_loop():
    assert not has_loop("It winds a compass needle through a compass needle, matey.")


def test_overlapping_occurrences_of_a_3gram_count():
    assert not has_loop("yo ho yo ho yo")  # "yo ho yo" at words 1 and 3
    assert has_loop("yo ho yo ho yo ho yo")  # "yo ho yo" at words 1, 3 and 5


def test_one_word_four_times_in_a_row_is_a_loop():
    assert has_loop("a beam beam beam beam of light")


def test_one_word_three_times_in_a_row_is_not_a_loop():
    assert not has_loop("a beam beam beam of light")


def test_repeats_that_are_not_in_a_row_are_no_loop():
    assert not has_loop("Arr, matey! The sea, matey, is deep, matey, and wide, matey. Fair winds!")


def test_case_and_punctuation_do_not_hide_a_loop():
    assert words("Matey, matey! MATEY... it's") == ["matey", "matey", "matey", "it's"]
    assert has_loop("Matey, matey! MATEY... matey.")
    assert has_loop("The big Sea. the big sea; THE BIG SEA!")  # "the big sea" three times
    assert not has_loop("The big Sea. the big sea; THE SEA!")  # ... twice


def test_short_and_empty_answers_do_not_loop():
    assert not has_loop("") and not has_loop("Arr!") and not has_loop("Fair winds")
