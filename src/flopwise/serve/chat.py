"""The chat template for flopwise's base models (they have no special chat tokens).

A conversation is rendered as plain text, one turn per paragraph, and the model continues after
"Assistant:":

    System: You are terse.        (only if a system message is given)

    User: What is 2 + 2?

    Assistant:

Generation stops at the start of a new turn ("\\n\\nUser:" or "\\n\\nSystem:"), besides the request's own stops.
"""

from __future__ import annotations

from flopwise.serve.config import RequestError

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}
TURN_STOPS = ["\n\nUser:", "\n\nSystem:"]


def content_text(content) -> str:
    """A message's content: a string, or OpenAI's list of parts of which only text parts are accepted."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise RequestError("only text content parts are supported", "messages")
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if content is None:
        return ""
    raise RequestError("message content must be a string or a list of text parts", "messages")


def render_chat(messages: list[dict]) -> str:
    if not messages:
        raise RequestError("messages must not be empty", "messages")
    turns = []
    for message in messages:
        role = message.get("role")
        if role not in ROLES:
            raise RequestError(f"message role {role!r}: must be one of {', '.join(ROLES)}", "messages")
        turns.append(f"{ROLES[role]}: {content_text(message.get('content')).strip()}")
    return "\n\n".join(turns) + "\n\nAssistant:"
