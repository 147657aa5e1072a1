"""Shipping costs for the web shop's checkout."""

BASE_FEE = 4.50  # per parcel
RATE_PER_KG = 1.20
FREE_ABOVE = 100.00  # orders worth more than this ship for free


def parcel_weight(items):
    """Total weight in kg of (name, weight_kg, count) items."""
    return sum(weight * count for _name, weight, count in items)


def shipping_cost(order_total, items):
    """What the customer pays for shipping, rounded to cents."""
    if order_total > FREE_ABOVE:
        return 0.0
    weight = parcel_weight(items)
    return round(BASE_FEE + weight * RATE_PER_KILO, 2)
