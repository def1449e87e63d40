"""GET /docs: Swagger UI served from a packaged copy (the `swagger-ui-bundle-v2` wheel, Swagger UI 5 — needed for
FastAPI's OpenAPI 3.1 schema), so the page works on a server without internet; titled vqtok, not FastAPI.

FastAPI's default /docs page loads Swagger's JavaScript and CSS from a CDN. This swaps that route for one built with
FastAPI's own `get_swagger_ui_html`, pointed at the packaged files mounted under `/docs/assets`.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.staticfiles import StaticFiles

ASSETS = "/docs/assets"


def install_docs(app: FastAPI, title: str, version: str) -> None:
    """Title the OpenAPI schema and serve /docs with local Swagger UI assets."""
    from swagger_ui_bundle import swagger_ui_path

    app.title, app.version, app.openapi_schema = title, version, None  # the schema is rebuilt with this title
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in ("/docs", ASSETS)]
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
    page = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{title} API", oauth2_redirect_url=None,
                               swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{ASSETS}/swagger-ui.css",
                               swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")

    async def docs():
        return page

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
