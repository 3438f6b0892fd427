"""Input rules for the names vidledger is given (the HTTP API's input rules; see `/docs`).

Pure: the API's models and the CLI both ask here.
"""

from __future__ import annotations

import re

IMG_NAME_MAX = 500
SOURCE_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,19}$")
#: A generator's name in the generators file, a request and a claim.
GENERATOR_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def img_name_problem(name: str) -> str | None:
    """Why `name` is not a valid img_name, or None if it is."""
    if not 1 <= len(name) <= IMG_NAME_MAX:
        return f"img_name must be 1-{IMG_NAME_MAX} characters"
    if "/" in name or "\\" in name:
        return "img_name must not contain '/' or '\\'"
    if _CONTROL.search(name):
        return "img_name must not contain control characters"
    if name in (".", ".."):
        return "img_name must not be '.' or '..'"
    if not _is_unicode(name):
        return "img_name must be valid Unicode (no lone surrogates)"
    return None


def _is_unicode(text: str) -> bool:
    """False for a str with lone surrogates (a JSON "\\ud800" decodes to one):
    no database can store it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_img_name(name: str) -> str:
    """`name` if valid; raises ValueError with the reason otherwise."""
    problem = img_name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    return name
