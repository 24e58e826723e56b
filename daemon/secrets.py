"""Credentials never leave the process in clear: one helper for everything printed, logged or
stored.

`mask_url` hides the password of a URL (and a bare token used as the user name, and
credential-like query parameters); `redact` applies it to a whole plain structure such as
`Config.to_dict()` and also hides values stored under secret-sounding keys. Both are pure and
never raise, so they are safe to call in error paths.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

MASK = "***"

# Query parameters whose value is a credential (compared case-insensitively), besides those
# whose name contains one of SECRET_KEY_PARTS (`sslpassword`, the passphrase of a client key
# that asyncpg reads from the URL; `access_token`, `client_secret`).
SECRET_QUERY_PARAMS = frozenset(
    {"pass", "pwd", "key", "auth", "sig", "signature", "credential", "credentials"}
)
# A key (of a dict walked by `redact`, or a query parameter) containing one of these holds a
# credential.
SECRET_KEY_PARTS = ("password", "passwd", "secret", "token", "api_key", "apikey", "private_key")


def _secret_param(name: str) -> bool:
    name = name.strip().lower()
    return name in SECRET_QUERY_PARAMS or any(part in name for part in SECRET_KEY_PARTS)


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):(//)?")


def _token_like(user: str) -> bool:
    """A user name without a password that is really an access token (as in
    `https://<token>@host`): long, and not a plain word. Short names such as `postgres` stay
    visible because the operator needs them to debug a failed login."""
    return (len(user) >= 16 and any(c.isdigit() for c in user)) or len(user) >= 32


def _split_userinfo(rest: str) -> tuple[str | None, str]:
    """`user:password` and the rest of a URL after `scheme://`, where the password may hold
    an unencoded `/`, `?`, `#` or `@` (generated passwords do): the user information then
    ends at the last `@`. Otherwise None, and the URL is split at its first `/`, `?`, `#`
    as usual. The last `@` is taken when what precedes it starts as `user:` (no `/`, `?`,
    `#` in the user), the usual authority has no `@` of its own, and either that authority
    is not a valid `host[:port]` (`u:pa` before `/ss@h`: a password, not a port) or the `@`
    lies in the path. An `@` in the query of a valid authority (`?apikey=K3y@2024`) is the
    query's. One of the readings `_secret_spans` masks, not the only one."""
    at = rest.rfind("@")
    if at < 0:
        return None, rest
    user, colon, _ = rest[:at].partition(":")
    if not colon or any(c in user for c in "/?#"):
        return None, rest
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    cut = min(ends, default=len(rest))
    if "@" in rest[:cut]:
        return None, rest  # the usual reading: the last @ of the authority ends the user
    query = [i for i in (rest.find(c) for c in "?#") if i >= 0]
    in_query = bool(query) and min(query) < at
    if _host_port(rest[:cut]) and in_query:
        return None, rest
    return rest[:at], rest[at + 1 :]


def _host_port(authority: str) -> bool:
    """A plausible `host[:port]` (port digits, host without spaces), IPv6 in brackets."""
    host, colon, port = (
        authority.rpartition(":") if not authority.endswith("]") else (authority, "", "")
    )
    if not colon:
        host, port = authority, ""
    return bool(host) and (port == "" or port.isdigit()) and not any(c.isspace() for c in host)


def mask_url(url: str) -> str:
    """`url` with its credentials replaced by `***`; anything that is not a URL unchanged.

    Parsed by hand rather than with urllib so that a URL urllib rejects (a port such as
    `notaport`, an unencoded `@` in the password) is still masked: those are exactly the URLs
    that end up in error messages.

    An ambiguous URL (an unencoded `@`, `/`, `?` or `#` in a generated password: is
    `u:Gen@Pw/Xy9#S3cret@h` the password `Gen` at host `Pw`, or `Gen@Pw/Xy9#S3cret` at host
    `h`?) is masked in every reading at once: the characters of the original URL that any
    reading takes for a secret all go, so no part of any candidate password survives. (The
    readings used to be masked one after the other, the later ones in the already-masked
    text, where a longer password no longer occurred: its tail was shown.) The price is a
    port or path hidden with a password it may belong to
    (`https://host:8443/p?apikey=K3y@2024` reads `https://host:***`)."""
    if not isinstance(url, str):
        return url
    spans = _merged(_secret_spans(url))
    if not spans:
        return url
    out, pos = [], 0
    for start, end in spans:
        out += [url[pos:start], MASK]
        pos = end
    out.append(url[pos:])
    return "".join(out)


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """`spans` sorted, with overlapping or touching ones joined (one `***` for both)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


# What follows the @ that ends a URL's user information: a host, an optional port, then the
# path, query, fragment or the end.
_HOST_AFTER = re.compile(r"[A-Za-z0-9.\-\[\]:]*(?:[/?#]|$)")


def _secret_spans(url: str) -> list[tuple[int, int]]:
    """Where in `url` a secret lies (password, token user, secret query value), as
    `(start, end)` offsets, for every reading of an ambiguous URL: the usual one (the user
    information ends at the last `@` before the first `/`, `?`, `#`), `_split_userinfo`'s,
    and one for every `@` a host may follow (a password with `/` and a query with `@` has
    several). Empty values are no secret (an unset password stays visibly unset)."""
    m = _SCHEME.match(url)
    if m is None:
        return []
    base, whole, hier = m.end(), url[m.end() :], bool(m.group(2))
    # Each reading: the offset in `whole` of the @ ending the user information, or None for
    # the usual reading.
    ats: set[int | None] = {None}
    if hier:
        user = whole.partition(":")[0]
        if ":" in whole and not any(c in user for c in "/?#@"):
            found = whole.find("@")
            while found >= 0:
                if _HOST_AFTER.match(whole, found + 1):  # a@b.com&page=2 is a query value's
                    ats.add(found)
                found = whole.find("@", found + 1)
        chosen, _ = _split_userinfo(whole)
        if chosen is not None:
            ats.add(len(chosen))
    spans: list[tuple[int, int]] = []
    for reading in ats:
        at, start = reading, 0 if reading is None else reading + 1
        body = whole[start:].split("#", 1)[0]
        before_query, q, query = body.partition("?")
        if at is None and hier:
            authority = before_query.split("/", 1)[0]
            if "@" in authority:
                at = authority.rfind("@")
        if at is not None:
            user, colon, password = whole[:at].partition(":")
            if colon and password:
                spans.append((base + len(user) + 1, base + at))
            if _token_like(user):
                spans.append((base, base + len(user)))
        if q:
            offset = base + start + len(before_query) + 1
            for item in query.split("&"):
                name, eq, value = item.partition("=")
                if eq and value and _secret_param(name):
                    spans.append((offset + len(name) + 1, offset + len(item)))
                offset += len(item) + 1
    return spans


def _secret_key(key: Any) -> bool:
    k = str(key).lower()
    return any(part in k for part in SECRET_KEY_PARTS)


def redact(obj: Any) -> Any:
    """A copy of plain data (dicts, lists, tuples, scalars) with every URL masked and every
    non-empty value under a secret-sounding key replaced by `***`. An empty value stays empty,
    so the operator can still see that a secret is unset."""
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if _secret_key(k) and v not in (None, "") and not isinstance(v, Mapping | list):
                out[k] = MASK
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, list | tuple):
        return type(obj)(redact(v) for v in obj)
    if isinstance(obj, str):
        return mask_url(obj)
    return obj


def scrub(text: str, *urls: str) -> str:
    """`text` (an exception message, say) with the passwords of `urls` removed, for errors
    raised by client libraries that may quote the URL they were given."""
    for url in urls:
        if not url:
            continue
        masked = mask_url(url)
        if masked != url:
            text = text.replace(url, masked)
        for secret in _secrets_of(url):
            text = text.replace(secret, MASK)
    return text


def _secrets_of(url: str) -> list[str]:
    """The literal secret substrings of a URL (every reading's password, token user, secret
    query values), longest first so that a secret containing a shorter one is replaced whole;
    under 3 characters left out, as they would turn any word holding them into ***."""
    found = {url[start:end] for start, end in _secret_spans(url)}
    return sorted((s for s in found if len(s) >= 3), key=len, reverse=True)


# URLs inside free text (an exception message quoting a DSN), and `password=...`-style pairs
# (libpq keyword DSNs, "token: abc" in a vendor's error), masked in every string shown.
# Bounded, and anchored where a scheme can start: unbounded, a long line without `://`
# (a 1 MB error text) was scanned from every letter to its end, quadratic (80 KB: 4.9 s, on
# the event loop: mask_text runs in error paths).
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]{0,31}://[^\s\"'<>]+")
# `name=value` or `name: value` where the name ends in a credential word (`sslpassword=`,
# `client_secret:`; matched from the word on, so that no prefix is scanned: a prefix pattern
# made a long hyphenated line quadratic), quoted or not: a libpq keyword DSN quotes a
# password with spaces (`password='a b;c'`), and a dict's repr quotes both (`'password': 'x'`).
# The value is masked whatever it is, an English word too: `invalid_token: no route` (an
# OAuth error code before its message) reads `invalid_token: *** route`. Deliberate, a
# word too many rather than a credential shown: the pattern cannot tell an error code that
# ends in a credential word from a credential's name (a server may well echo the refused
# token after `invalid_token: `, and a key refused for one wrong character is still nearly
# the key), and an exemption for values that read as English would show any password that
# is such a word. tradingd's own messages put no `: ` after a credential word instead (the
# Alpaca refused-keys error), rather than this masking being narrowed.
_SECRET_PAIR = re.compile(
    r"(?i)((?:password|passwd|pwd|secret(?:[_-]?key)?|private[_-]?key|token"
    r"|(?:api[_-]?key|apikey)(?:[_-]?id)?)['\"]?)"
    # `%3D`: an `=` URL-encoded (a query quoted inside another URL's query).
    r"(\s*(?:[=:]|%3[Dd])\s*)(?!\*\*\*|'\*\*\*'|\"\*\*\*\")"
    # A quoted value ends at its closing quote, not at a backslash-escaped one (libpq
    # escapes a quote in a password so), and never spans a line: a traceback's later lines
    # are not a value. A quote that does not close on the line: its first word goes.
    r"('(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"|['\"]?[^\s&,;\"'<>]+)"
)


# Words of an environment variable's name (split at "_") that say its value is a credential:
# APCA_API_KEY_ID, APCA_API_SECRET_KEY, ALPHA_VANTAGE_API_KEY, TRADINGD_HEALTH_TOKEN,
# DB_PASSWORD, REDIS_PASSWORD.
_SECRET_NAME_WORDS = frozenset(
    {"KEY", "APIKEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "PASS", "PWD", "CREDENTIALS"}
)
# Client libraries' own credential variables whose names are not split into words: libpq
# and asyncpg read PGPASSWORD, redis-cli REDISCLI_AUTH; REDIS_AUTH is a common spelling of
# a Redis password in images and compose files. (PGPASSFILE is a path: not a credential.)
_SECRET_NAMES = frozenset({"PGPASSWORD", "REDISCLI_AUTH", "REDIS_AUTH"})
# The shell's own variables that hold a credential word but never a credential: PWD is the
# working directory (masked, every path logged from a checkout became "***/models/default").
_NOT_SECRET_NAMES = frozenset({"PWD", "OLDPWD"})
# Shorter values are not masked wherever they occur: a 4-character password would turn every
# word holding it into ***.
_MIN_ENV_SECRET = 8


def _secret_name(name: str) -> bool:
    """An environment variable's name that says its value is a credential."""
    upper = name.upper()
    if upper in _NOT_SECRET_NAMES:
        return False
    return upper in _SECRET_NAMES or bool(_SECRET_NAME_WORDS.intersection(upper.split("_")))


def env_secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    """The credential values of the environment, longest first: every variable whose name
    has a credential word, and the passwords and secret query values of every URL-valued
    variable (DATABASE_URL, REDIS_URL). For a last mask over log lines, where a library's
    message or an exception's traceback quotes a key no cleaner knew of (alpaca-py's stream
    logs a websocket's close reason as the server sent it)."""
    found: set[str] = set()
    for name, value in env.items():
        value = value.strip()
        if not value:
            continue
        if _secret_name(name):
            found.add(value)
        if "://" in value:
            found.update(_secrets_of(value))
    return tuple(sorted((v for v in found if len(v) >= _MIN_ENV_SECRET), key=len, reverse=True))


def mask_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with every credential value of the environment (`env_secrets`; `os.environ`
    by default) replaced by ***: the last mask over what leaves the process besides log lines
    (an HTTP answer, the printed error line), as `logs._MaskEnvSecrets` is over log lines.
    Without it a key quoted with no `key=` before it (a library's message, a value put in
    the wrong setting) went out as written."""
    return mask_values(text, env_secrets(os.environ if env is None else env))


def mask_values(text: str, secrets: Sequence[str]) -> str:
    """`text` with each of `secrets` (longest first, as `env_secrets` gives them) replaced
    by ***, wherever it occurs: the one loop of the environment's masks (`mask_env`, the
    health server's answers, `logs._MaskEnvSecrets`)."""
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


# An Authorization header's credentials (`Bearer <token>`, `Basic <base64>`), quoted by a
# client's error or a server echoing the request: a token-like word (8+ characters with a
# digit, one of `+/=` or a lower-case letter before an upper-case one, as base64 has), so
# that "Basic validation failed" stays as it is.
_AUTH_SCHEME = re.compile(
    r"\b([Bb]earer|[Bb]asic|BEARER|BASIC)(\s+)"
    r"(?=[A-Za-z0-9._~+/=-]*(?:[0-9+/=]|[a-z][A-Z]))[A-Za-z0-9._~+/=-]{8,}"
)


# The rest of a URL whose password holds a raw space (unencoded, as a URL typed into a
# setting may have it), from the space on: up to 8 more space-separated parts of the
# password (bounded: no quadratic scan of a long line), then `@`, a host and the rest of the
# URL. `_URL_IN_TEXT` ends its match at the first space: `postgresql://u:my pass@db/x`
# matched `postgresql://u:my`, which has no `@`, so nothing was masked and the password
# showed in full.
_SPACED_PASSWORD_TAIL = re.compile(
    r"(?:[ \t]+[^\s\"'<>@]{0,64}){1,8}@[A-Za-z0-9.\-\[\]]+(?::[0-9]*)?(?:[/?#][^\s\"'<>]*)?"
    r"(?=[\s\"'<>]|$)"
)


def _url_in_text(text: str, m: re.Match[str]) -> tuple[int, str]:
    """The URL `_URL_IN_TEXT` found at `m`, masked, and where it ends in `text`: with the
    rest of a password holding spaces (`_SPACED_PASSWORD_TAIL`) when the match is a user
    and the start of a password (`scheme://user:pa`, no `@`; not `host:port`, all digits)."""
    url = m.group(0)
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if "@" not in url and ":" in authority and not authority.rpartition(":")[2].isdigit():
        tail = _SPACED_PASSWORD_TAIL.match(text, m.end())
        if tail is not None:
            return tail.end(), mask_url(url + tail.group(0))
    return m.end(), mask_url(url)


def mask_text(text: str) -> str:
    """`text` with the credentials of every embedded URL, every `password=...` pair and
    every `Bearer`/`Basic` credential masked: for free text such as an exception message (a
    whole-URL string is masked by `redact` already). A URL's password with a raw space is
    masked whole when `@host` follows it (`_SPACED_PASSWORD_TAIL`)."""
    out, pos = [], 0
    for m in _URL_IN_TEXT.finditer(text):
        if m.start() < pos:
            continue  # inside a URL whose spaced password was taken with it
        end, masked = _url_in_text(text, m)
        out += [text[pos : m.start()], masked]
        pos = end
    text = "".join(out) + text[pos:]
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
