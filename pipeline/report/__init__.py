"""Stage 5, report: what happened after a send, as text, JSON or one self-contained HTML page
(`stats` counts and rates from the store, `chart` the opens-and-clicks chart as inline SVG).
"""
