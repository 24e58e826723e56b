"""Built-in plugins of tradingd, registered through the `tradingd.plugins` entry points."""
