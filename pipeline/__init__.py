"""Handwriting recognition library: data, augmentation, model, decoding. No work at import."""
