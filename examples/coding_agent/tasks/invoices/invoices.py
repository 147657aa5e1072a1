"""Invoice numbers, dates and totals for the billing export (the settings are in config.ini)."""

import datetime

PREFIX = "INV-"
DIGITS = 5
PAYMENT_DAYS = 30
VAT_RATE = 0.20


def invoice_number(serial):
    """The printed number of invoice `serial`: PREFIX, then the serial padded to DIGITS digits."""
    return f"{PREFIX}{serial:0{DIGITS}d}"


def serial_of(number):
    """The serial inside a printed invoice number (the inverse of `invoice_number`)."""
    if not number.startswith(PREFIX):
        raise ValueError(f"not an invoice number: {number!r}")
    return int(number[len(PREFIX):])


def due_date(issued):
    """The day payment is due for an invoice issued on `issued` (a datetime.date)."""
    return issued + datetime.timedelta(days=PAYMENT_DAYS)


def net_total(lines):
    """The sum of quantity x unit price over the invoice's lines, rounded to cents."""
    return round(sum(quantity * price for quantity, price in lines), 2)


def gross_total(lines):
    """The net total plus VAT, rounded to cents."""
    return round(net_total(lines) * (1 + VAT_RATE), 2)


def format_amount(amount):
    """An amount as printed on the invoice: two decimals and a thousands separator."""
    return f"{amount:,.2f}"


def summary_line(serial, issued, lines):
    """One line of the export: number, issue date, due date and gross total."""
    number = invoice_number(serial)
    return f"{number}  {issued:%Y-%m-%d}  due {due_date(issued):%Y-%m-%d}  {format_amount(gross_total(lines))}"
