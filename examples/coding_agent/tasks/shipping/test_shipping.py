import unittest

from shipping import parcel_weight, shipping_cost

ITEMS = [("mug", 0.4, 2), ("teapot", 1.2, 1)]


class ShippingTest(unittest.TestCase):
    def test_parcel_weight(self):
        self.assertAlmostEqual(parcel_weight(ITEMS), 2.0)

    def test_free_shipping_above_the_threshold(self):
        self.assertEqual(shipping_cost(120.0, ITEMS), 0.0)

    def test_cost_by_weight(self):
        self.assertEqual(shipping_cost(30.0, ITEMS), 6.9)


if __name__ == "__main__":
    unittest.main()
