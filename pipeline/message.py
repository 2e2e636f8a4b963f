"""One personalised MIME message: what the outbox writes and what the size check measures."""

from __future__ import annotations

from collections.abc import Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import EmailPolicy

from pipeline.render import PLACEHOLDER_RE, Email


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
    """What SendGrid does with `substitutions`: replace each %%tag%%; unknown tags become empty."""
    return PLACEHOLDER_RE.sub(lambda m: values.get(m.group(1), ""), text)


def mime_message(
    email: Email,
    *,
    sender: Address,
    to: Address,
    values: Mapping[str, str],
    headers: Mapping[str, str] = {},  # noqa: B006 - read only
    reply_to: str | None = None,
) -> EmailMessage:
    """multipart/alternative with text first, encoded quoted-printable as SendGrid sends it."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = substitute(email.subject, values)
    if reply_to:
        msg["Reply-To"] = reply_to
    for name, value in headers.items():
        msg[name] = substitute(value, values)
    msg.set_content(substitute(email.text, values), subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(substitute(email.html, values), subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


def encoded_size(email: Email, *, sender: Address, sample_values: Mapping[str, str]) -> int:
    """Bytes of the raw message after transfer encoding: what Gmail counts before clipping at ~100 KB."""
    to = Address("Sample Subscriber", addr_spec="subscriber@example.org")
    return len(mime_message(email, sender=sender, to=to, values=sample_values).as_bytes())
