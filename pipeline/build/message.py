"""One personalised MIME message: what the outbox writes and what the size check measures.

Header fields that carry a subscriber's name or a merge field (To, Subject) are written here, not parsed
by `email` from a string: its parser decodes anything that looks like an RFC 2047 encoded word, so a name
typed as `=?utf-8?q?...?=` would become header structure. Text that is not plain ASCII, or holds `=?`,
is written as encoded words (at most 75 characters each) that decode to exactly that text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from email.header import Header
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import formataddr

from pipeline.build.render import PLACEHOLDER_RE, Email
from pipeline.errors import SendError
from pipeline.lists.values import unsafe_char

MAX_ENCODED_WORD = 75  # RFC 2047, section 2


class _Policy(EmailPolicy):
    """RFC 2045's 76-character lines (SMTP's own 78 lets Korean quoted-printable lines reach 78) and RFC 2047's
    75-character encoded words, except List-* headers: a URL must stay a URL (an unbreakable one-click link
    longer than a line would otherwise come out as encoded words), folded after its commas only."""

    def fold(self, name: str, value: str) -> str:
        if name.lower().startswith("list-") and str(value).isascii():
            return f"{name}: " + str(value).replace(", ", "," + self.linesep + " ") + self.linesep
        return str(super().fold(name, value))

    def fold_binary(self, name: str, value: str) -> bytes:
        if name.lower().startswith("list-") and str(value).isascii():
            return self.fold(name, value).encode("ascii")
        return bytes(super().fold_binary(name, value))


POLICY = _Policy(max_line_length=76, linesep="\r\n")


def substitute(text: str, values: Mapping[str, str]) -> str:
    """What SendGrid does with `substitutions`: replace each %%tag%% once (a value that looks like a tag
    stays text); unknown tags become empty."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), text)


def header_text(field: str, text: str) -> str:
    """`text` as the value of header `field`: as it is when plain ASCII, else RFC 2047 encoded words.
    SendError (naming the field, never the text) for a control character, which no header may hold."""
    if bad := unsafe_char(text):
        raise SendError(f"the {field} header would hold a control character ({bad}) — remove it from where that "
                        "header's text comes from (the issue's subject, the list name or the issue folder name)")
    if text.isascii() and "=?" not in text:
        return text
    # maxlinelen counts the folding space too: each encoded word stays within RFC 2047's 75 characters.
    return Header(text, "utf-8", maxlinelen=MAX_ENCODED_WORD + 1, header_name=field).encode()


def address_header(field: str, name: str, address: str) -> str:
    """`Name <address>`: the display name quoted as RFC 5322 requires, or encoded (see header_text).

    A domain in Unicode is written in its ASCII (IDNA) form; a local part in Unicode stays as it is, and
    the message then needs SMTPUTF8 (the outbox writes it as UTF-8).
    """
    local, at, domain = address.rpartition("@")
    if at and not domain.isascii():
        # email-validator accepted it; IDNA 2003 may not know every such domain: then it stays as it is
        with contextlib.suppress(UnicodeError):
            address = f"{local}@{domain.encode('idna').decode('ascii')}"
    if not name:
        return address
    if name.isascii() and "=?" not in name and not unsafe_char(name):
        return formataddr((name, address))  # quotes and escapes a name with specials ("Doe, Jane")
    return f"{header_text(field, name)} <{address}>"


def mime_message(
    email: Email,
    *,
    sender: Address,
    to: tuple[str, str],
    values: Mapping[str, str],
    headers: Mapping[str, str] = {},  # noqa: B006 - read only
    reply_to: str | None = None,
) -> EmailMessage:
    """multipart/alternative with text first, encoded quoted-printable as SendGrid sends it.
    `to` is (display name, address)."""
    msg = EmailMessage(policy=POLICY)
    msg.set_raw("From", address_header("From", sender.display_name, sender.addr_spec))
    msg.set_raw("To", address_header("To", *to))
    msg.set_raw("Subject", header_text("Subject", substitute(email.subject, values)))
    if reply_to:
        msg["Reply-To"] = reply_to
    for name, value in headers.items():
        msg.set_raw(name, header_text(name, substitute(value, values)))
    msg.set_content(substitute(email.text, values), subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(substitute(email.html, values), subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


def encoded_size(email: Email, *, sender: Address, sample_values: Mapping[str, str]) -> int:
    """Bytes of the raw message after transfer encoding: what Gmail counts before clipping at ~100 KB."""
    to = ("Sample Subscriber", "subscriber@example.org")
    return len(mime_message(email, sender=sender, to=to, values=sample_values).as_bytes())
