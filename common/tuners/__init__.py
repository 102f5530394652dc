"""Adapter kinds beyond peft's own, one module each (peft's tuners layout)."""
