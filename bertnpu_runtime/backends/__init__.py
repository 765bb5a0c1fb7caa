"""Encoder backends: hidden states in, last hidden states out. See base.EncoderBackend."""
