"""Quantization: LSQ fake quantization, the bit-width ladder, the PTQ baseline, QDQ export."""
