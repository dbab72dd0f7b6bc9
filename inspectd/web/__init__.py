"""The station web UI: Live, Trends, Analyse and Review pages over the daemon's journal.

Served by the daemon (`inspectd run --http HOST:PORT`, config `http:`) or on its own over a
state dir (`inspectd ui --state-dir DIR`). A standard ASGI stack (Starlette on uvicorn) in a
thread of its own: the pipeline never waits for it, and a handler that fails only fails
its request. The pages are static HTML and JavaScript (charts: uPlot, shipped in
`static/vendor/`, nothing fetched at run time) over a small JSON API; every number on a page
comes from the same code the CLI and the daemon use.

Layout: `app.py` builds the application from one router module per page area (`live.py`
with `live_feed.py`, `trends.py` with `alarms.py`, `analyse.py`, `review.py` with
`finetune.py`, each exposing `routes(context)` and using `routing.py`'s helpers), `auth.py`
guards every request, `journal_reader.py` reads the journal read-only, `frame_store.py` keeps
the frames the pages show, `server.py` runs uvicorn in a thread, `context.py` holds what the
routers share.
"""
