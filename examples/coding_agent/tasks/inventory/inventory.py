"""Stock keeping for a small shop."""

from dataclasses import dataclass, field


@dataclass
class Item:
    """One product on the shelves."""

    name: str
    price: float
    quantity: int = 0
    reorder_level: int = 5
    tags: list = field(default_factory=list)


class Inventory:
    """The shop's items by name."""

    def __init__(self):
        self.items = {}

    def add(self, name, price, quantity=0, reorder_level=5):
        """Add a new item; an existing name is an error."""
        if name in self.items:
            raise ValueError(f"{name} is already in the inventory")
        if price < 0:
            raise ValueError("a price cannot be negative")
        self.items[name] = Item(name, price, quantity, reorder_level)
        return self.items[name]

    def remove(self, name):
        """Remove an item and return it."""
        return self.items.pop(name)

    def restock(self, name, amount):
        """Add `amount` units of an item."""
        if amount <= 0:
            raise ValueError("restock a positive amount")
        self.items[name].quantity += amount

    def sell(self, name, amount=1):
        """Take `amount` units out; selling more than is there is an error."""
        item = self.items[name]
        if amount > item.quantity:
            raise ValueError(f"only {item.quantity} {name} left")
        item.quantity -= amount
        return amount * item.price

    def tag(self, name, *tags):
        """Attach tags to an item (each once)."""
        item = self.items[name]
        for tag in tags:
            if tag not in item.tags:
                item.tags.append(tag)

    def tagged(self, tag):
        """Names of the items carrying `tag`, sorted."""
        return sorted(name for name, item in self.items.items() if tag in item.tags)

    def to_reorder(self):
        """Names of the items at or below their reorder level, sorted."""
        return sorted(name for name, item in self.items.items() if item.quantity <= item.reorder_level)

    def total_units(self):
        """All units on the shelves."""
        return sum(item.quantity for item in self.items.values())

    def total_value(self):
        """What everything on the shelves is worth: price times quantity, summed."""
        return sum(item.price + item.quantity for item in self.items.values())

    def cheapest(self):
        """The name of the cheapest item (None for an empty inventory)."""
        if not self.items:
            return None
        return min(self.items.values(), key=lambda item: item.price).name

    def report(self):
        """One line per item: name, quantity and price."""
        lines = []
        for name in sorted(self.items):
            item = self.items[name]
            lines.append(f"{name}: {item.quantity} x {item.price:.2f}")
        return "\n".join(lines)
