"""Stage 2, lists: who may be mailed. Subscriber CSV lists read and checked row by row (`subscribers`,
one bad-row rule in `values`), exports imported (`importing`), SendGrid's suppressions synced (`suppressions`).
"""
