"""`GET /`: the web page (server/static/index.html, shipped as package data). It calls only the public REST API,
so it needs no key to load; the key a user types stays in the browser tab and goes out as X-API-Key."""
from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

PAGE = "index.html"


def page_html() -> str:
    return (files(__package__) / "static" / PAGE).read_text(encoding="utf-8")


def install(app: FastAPI) -> None:
    """Serve the page at `/` in place of LitServe's plain-text "litserve running" index."""
    html = page_html()  # read once, at start-up: a missing file fails here, not on the first visit
    app.router.routes = [r for r in app.router.routes
                         if not (getattr(r, "path", None) == "/" and "GET" in (getattr(r, "methods", None) or ()))]

    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    app.add_api_route("/", index, methods=["GET"], summary="The web page: see an image's tokens",
                      tags=["vqtok"], response_class=HTMLResponse)
