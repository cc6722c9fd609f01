"""Thin DVC stage entry points: `python -m stages.<name>` reads params, calls imgclf, writes."""
