import unittest

from textstats import average_word_length, top_words, word_count, words


class TextStatsTest(unittest.TestCase):
    def test_words_strip_punctuation(self):
        self.assertEqual(words("Hello, world! Hello."), ["hello", "world", "hello"])

    def test_word_count(self):
        self.assertEqual(word_count("one two  three"), 3)

    def test_average_word_length(self):
        self.assertEqual(average_word_length("ab abcd"), 3.0)
        self.assertEqual(average_word_length(""), 0.0)

    def test_top_words_most_frequent_first(self):
        text = "the cat and the dog and the bird"
        self.assertEqual(top_words(text, 2), ["the", "and"])


if __name__ == "__main__":
    unittest.main()
