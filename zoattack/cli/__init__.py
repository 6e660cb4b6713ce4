"""Thin Typer commands over library calls; `zoattack --help` lists them."""
