import unittest

from codes import is_valid, normalise


class CodesTest(unittest.TestCase):
    def test_normalise(self):
        self.assertEqual(normalise(" qx-2048 "), "QX-2048")

    def test_valid_codes(self):
        self.assertTrue(is_valid("QX-2048"))
        self.assertTrue(is_valid("ab-0001"))

    def test_codes_with_the_wrong_number_of_digits(self):
        for code in ("QX-204", "QX-20481"):
            self.assertFalse(is_valid(code), "a code with the wrong number of digits was accepted (README.md)")


if __name__ == "__main__":
    unittest.main()
