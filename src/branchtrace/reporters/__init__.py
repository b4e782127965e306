"""Reporters: pure functions of a trace, written to a stream. One module per output."""
