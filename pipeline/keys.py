"""The secrets read from the environment, checked for shape before anything is recorded or sent.

SENDGRID_API_KEY, NEWSLETTER_SECRET and SENDGRID_WEBHOOK_PUBLIC_KEY are pasted by people, from password
managers and web pages: a stray line break or space is the common mistake. A key with one would fail later,
deep inside an HTTP client (whose traceback prints the header, key and all) or after a batch was recorded
as in flight. Every reader (send, serve, suppressions sync, the webhook key) comes through `checked`, whose
message names the variable and the position of the bad character, never the value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline.errors import PipelineError

API_KEY_ENV = "SENDGRID_API_KEY"
SECRET_ENV = "NEWSLETTER_SECRET"
PUBLIC_KEY_ENV = "SENDGRID_WEBHOOK_PUBLIC_KEY"


def checked(name: str, value: str, error: type[PipelineError], *, ascii_only: bool = False) -> str:
    """`value` if it holds no whitespace and no control or format character; else `error`, without the value.

    `ascii_only`: the value goes into an HTTP header (an API key), which carries ASCII only.
    """
    for position, char in enumerate(value, 1):
        if char.isspace() or not char.isprintable():
            what = "a line break" if char in "\r\n" else "whitespace" if char.isspace() else "a control character"
            raise error(f"{name} holds {what} (character {position} of {len(value)}), so it cannot be the key — "
                        f"set it again with the value exactly as issued, e.g. export {name}='…' with nothing "
                        "around it")
        if ascii_only and not char.isascii():
            raise error(f"{name} holds a character that is not ASCII (character {position} of {len(value)}), "
                        "which no API key has — copy the key again from SendGrid")
    return value


def from_env(name: str, error: type[PipelineError], *, environ: Mapping[str, str] | None = None,
             ascii_only: bool = False) -> str:
    """The variable's value checked by `checked`; '' when it is unset or empty (the caller says what then)."""
    value = (os.environ if environ is None else environ).get(name, "")
    return checked(name, value, error, ascii_only=ascii_only) if value else ""
