"""Stage 1, build: an issue folder becomes an email (HTML, text, MJML) and is checked.

`issue` and `editions` read and validate the folder (one `Issue` per language), `render` runs Jinja2 in
the theme's sandbox -> MJML -> mjml-python -> premailer (with `cjkmarkdown`, `textpart`, `images`,
`i18n`, `mjml_blame` as helpers), `checks` finds every problem, `builder` writes build/<issue>/,
`message` makes the MIME message (outbox and the size check), `preview` serves and screenshots it.
Public entry points: `builder.build_issue`, `checks.check_issue`, `render.render_email`.
"""
