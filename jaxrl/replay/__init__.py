"""Replay buffers as pytrees inside the jitted loop (thin layer over flashbax)."""
