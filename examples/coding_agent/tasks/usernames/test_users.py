import configparser
import os
import unittest

from users import valid_username

CONFIG = configparser.ConfigParser()
CONFIG.read(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.ini"))
LONGEST = CONFIG.getint("users", "max_name_length")


class UsersTest(unittest.TestCase):
    def test_characters(self):
        self.assertTrue(valid_username("ada_99"))
        self.assertFalse(valid_username("ada lovelace"))

    def test_longest_allowed_name(self):
        self.assertTrue(valid_username("a" * LONGEST))

    def test_longer_names_are_refused(self):
        accepted = valid_username("a" * (LONGEST + 1))
        self.assertFalse(accepted, "a name longer than max_name_length in config.ini was accepted")


if __name__ == "__main__":
    unittest.main()
