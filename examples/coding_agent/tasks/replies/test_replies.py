import os
import re
import unittest

from replies import format_reply

README = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")).read()
SIGN_OFF = re.search(r"sign-off\s+`([^`]+)`", README).group(1)


class RepliesTest(unittest.TestCase):
    def test_greeting(self):
        self.assertTrue(format_reply("Ada", "Fixed.").startswith("Hello Ada,\n\n"))

    def test_sign_off_follows_the_readme(self):
        # the message names the rule, not the words: the fix needs README.md, read earlier
        reply = format_reply("Ada", "Fixed.")
        self.assertTrue(reply.endswith("\n\n" + SIGN_OFF), "a reply without the sign-off that README.md asks for")


if __name__ == "__main__":
    unittest.main()
