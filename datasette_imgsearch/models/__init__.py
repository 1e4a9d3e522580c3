"""Models: naming and loading them (local folder, cache, hub), the hardware they run on, image
preprocessing, and turning pictures and text into unit vectors (plain-torch CLIP or sentence-transformers)."""
