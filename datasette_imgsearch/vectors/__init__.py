"""Vectors: the sibling FAISS index and its kinds, a catalog's vectors held in memory and kept in step
with the file, and the arithmetic of ranking them against a query vector."""
