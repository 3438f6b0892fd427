"""The path parameter that carries an img_name.

Starlette's `path` convertor is `.*`, which stops at a newline: a name with a
control character then matched no route and answered 404 "no such route".
This one takes anything up to the route's fixed tail, newlines included, so
that every bad name reaches `checked_name` and answers 422 like the others.
Importing this module registers the convertor (Starlette keeps one registry).
"""

from __future__ import annotations

from starlette.convertors import Convertor, register_url_convertor


class ImgNameConvertor(Convertor[str]):
    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("img_name", ImgNameConvertor())

#: Use in a route path: f"/videos/{IMG}/history".
IMG = "{img_name:img_name}"


class ImgNameOnlyConvertor(ImgNameConvertor):
    """An img_name that is the whole rest of the path, unless that rest ends in
    the tail of another GET route of an image (`/history`, …): those paths
    belong to that route, as they would if it were tried first. So the status
    route can be tried before all others (`videos.add_hot_routes`)."""

    regex = "(?s:(?!.*/(?:has-video|content|history)$).*)"


register_url_convertor("img_name_only", ImgNameOnlyConvertor())

#: Use in the path of an image's own resource, routed before its tails.
IMG_ONLY = "{img_name:img_name_only}"
