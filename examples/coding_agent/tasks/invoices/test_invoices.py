import configparser
import os
import unittest

from invoices import invoice_number

CONFIG = configparser.ConfigParser()
CONFIG.read(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.ini"))
SETTINGS = CONFIG["invoices"]


class InvoicesTest(unittest.TestCase):
    def test_serial_is_padded(self):
        self.assertTrue(invoice_number(42).endswith("00042"))

    def test_prefix_follows_the_config(self):
        # the message names the setting, not its value: the fix needs config.ini, read earlier
        number = invoice_number(42)
        self.assertTrue(number.startswith(SETTINGS["prefix"]), "an invoice number without the prefix in config.ini")
        self.assertEqual(len(number), len(SETTINGS["prefix"]) + SETTINGS.getint("digits"))


if __name__ == "__main__":
    unittest.main()
