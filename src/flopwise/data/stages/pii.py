"""PII scrubbing: e-mail addresses, IP addresses and secrets become placeholders; nothing is dropped."""

from __future__ import annotations

import re

from flopwise.data.stages.base import Stage

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}(?![\w:])")
_SECRETS = [
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),  # GitHub token
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"),  # Slack token
    re.compile(r"\bsk-[A-Za-z0-9_-]{32,}\b"),  # OpenAI-style key
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # Google API key
]
_ASSIGNED_SECRET = re.compile(
    r"""(?i)((?:api[_-]?key|secret|token|passw(?:or)?d|access[_-]?key)["']?\s*[:=]\s*["'])([^"'\s]{12,})(["'])"""
)
_KEEP_IPS = {"127.0.0.1", "0.0.0.0", "255.255.255.255", "255.255.255.0"}


class PII(Stage):
    type = "pii"
    defaults = {"emails": True, "ip_addresses": True, "secrets": True}

    def apply(self, doc):
        text = doc["text"]
        counts = self.stats.extra.setdefault("replaced", {})
        if self.p["emails"] and "@" in text:
            text, n = _EMAIL.subn("<EMAIL>", text)
            counts["email"] = counts.get("email", 0) + n
        if self.p["ip_addresses"] and "." in text:
            n = 0

            def ip(m):
                nonlocal n
                if m.group(0) in _KEEP_IPS:
                    return m.group(0)
                n += 1
                return "<IP_ADDRESS>"

            text = _IPV4.sub(ip, text)
            text, n6 = _IPV6.subn("<IP_ADDRESS>", text)
            counts["ip_address"] = counts.get("ip_address", 0) + n + n6
        if self.p["secrets"]:
            total = 0
            for rx in _SECRETS:
                text, k = rx.subn("<SECRET>", text)
                total += k
            text, k = _ASSIGNED_SECRET.subn(r"\1<SECRET>\3", text)
            counts["secret"] = counts.get("secret", 0) + total + k
        doc["text"] = text
        return None

