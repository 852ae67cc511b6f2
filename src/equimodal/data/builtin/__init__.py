"""Built-in datasets; every module here registers itself with ``@register_dataset``."""
