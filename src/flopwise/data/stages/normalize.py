"""Normalisation: Unicode NFC, mojibake repair (ftfy), control characters and line breaks."""

from __future__ import annotations

import unicodedata

from flopwise.data.stages.base import Stage

_CONTROL = {c: None for c in range(32) if chr(c) not in "\t\n\r"}
_CONTROL.update({0x7F: None, **{c: None for c in range(0x80, 0xA0)}})


class Normalize(Stage):
    type = "normalize"
    defaults = {"nfc": True, "ftfy": True, "strip_control": True}

    def __init__(self, name, only_sources=None, **params):
        super().__init__(name, only_sources, **params)
        self._fix = None
        if self.p["ftfy"]:
            import ftfy

            cfg = ftfy.TextFixerConfig(unescape_html=False, normalization=None, explain=False)
            self._fix = lambda t: ftfy.fix_text(t, cfg)

    def apply(self, doc):
        text = doc["text"]
        if not text.isascii():  # mojibake and non-NFC forms need non-ASCII characters
            if self._fix is not None:
                text = self._fix(text)
            if self.p["nfc"]:
                text = unicodedata.normalize("NFC", text)
        if self.p["strip_control"]:
            if "\r" in text:  # as ftfy's fix_line_breaks: CRLF and CR become LF
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            text = text.translate(_CONTROL)
        if not text.strip():
            return "empty_after_normalize"
        doc["text"] = text
        return None
