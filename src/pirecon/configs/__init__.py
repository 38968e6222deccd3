"""Every configuration of pirecon: frozen dataclasses with one line of documentation per field,
one flag parser and one `--help` format (`parse`), and the named model sizes (`variants`).

This package imports nothing else of pirecon but `errors`; every other package may import it."""
