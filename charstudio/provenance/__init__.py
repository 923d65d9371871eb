"""Provenance that survives: the invisible watermark (`watermark`), C2PA content credentials
(`credentials`), the one PNG writer (`png.write_png`) and `verify.verify_picture`.

Nothing is imported here: `charstudio.result` imports `provenance.png`, and `provenance.verify`
imports `charstudio.result`.
"""
