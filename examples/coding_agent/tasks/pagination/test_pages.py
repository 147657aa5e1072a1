import unittest

from pages import page, page_count


class PagesTest(unittest.TestCase):
    def test_page_count(self):
        self.assertEqual(page_count(list(range(10)), 4), 3)
        self.assertEqual(page_count([], 4), 0)

    def test_first_page_holds_the_first_items(self):
        self.assertEqual(page(list("abcdefg"), 1, 3), ["a", "b", "c"])

    def test_last_page_is_short(self):
        self.assertEqual(page(list("abcdefg"), 3, 3), ["g"])


if __name__ == "__main__":
    unittest.main()
