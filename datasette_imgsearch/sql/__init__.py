"""The SQL door: ``imgsearch()`` and ``imgsearch_score()``, and registering them on SQLite connections so
their errors carry a readable message."""
