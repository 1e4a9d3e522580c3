"""Image files: which files are images and walking a folder for them, decoding bytes into upright RGB
pixels with their EXIF facts and thumbnails, and the toy world the tests and the quick start draw."""
