import unittest

from inventory import Inventory


class InventoryTest(unittest.TestCase):
    def setUp(self):
        self.shop = Inventory()
        self.shop.add("tea", 4.0, quantity=10)
        self.shop.add("mug", 6.5, quantity=2)

    def test_sell_and_restock(self):
        self.assertEqual(self.shop.sell("tea", 3), 12.0)
        self.shop.restock("tea", 5)
        self.assertEqual(self.shop.items["tea"].quantity, 12)

    def test_reorder_list(self):
        self.assertEqual(self.shop.to_reorder(), ["mug"])

    def test_tags(self):
        self.shop.tag("tea", "drink", "drink")
        self.assertEqual(self.shop.tagged("drink"), ["tea"])

    def test_total_value(self):
        self.assertEqual(self.shop.total_value(), 53.0)


if __name__ == "__main__":
    unittest.main()
