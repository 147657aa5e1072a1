"""Pages of a list, numbered from 1."""


def page_count(items, size):
    """How many pages of `size` items `items` fills (0 for no items)."""
    return (len(items) + size - 1) // size


def page(items, number, size):
    """The items on page `number` (the first page is page 1)."""
    first = number * size
    return items[first:first + size]
