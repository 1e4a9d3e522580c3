"""The catalog: a SQLite file with one row per image, its schema, its frozen migrations and every SQL
read and write of it. Nothing here knows about models, FAISS or the web."""
