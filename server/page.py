"""`GET /`: the web page (server/static/index.html, shipped as package data). It calls only the public REST API,
so it needs no key to load; the key a user types stays in the browser tab and goes out as X-API-Key."""
from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from . import patches

PAGE = "index.html"


def page_html() -> str:
    return (files(__package__) / "static" / PAGE).read_text(encoding="utf-8")


def install(app: FastAPI) -> None:
    """Serve the page at `/` in place of LitServe's plain-text "litserve running" index."""
    html = page_html()  # read once, at start-up: a missing file fails here, not on the first visit

    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    patches.replace_index(app, index, summary="The web page: see an image's tokens", tags=["vqtok"],
                          response_class=HTMLResponse)
