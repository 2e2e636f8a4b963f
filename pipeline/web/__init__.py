"""Stage 4, serve: what readers and SendGrid reach. `app` is the Starlette app (unsubscribe pages, the
event webhook, the archive), `guard` its cross-site and undo rules, `webhook` the signature and what an
event means with `events`, `archive` the public pages and feeds (also written as static files), `pages` the
theme's page templates every page a reader sees is rendered from.
"""
