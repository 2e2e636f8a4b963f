"""Stage 3, send: a built issue to a list through SendGrid (or the outbox), exactly once.

`job.SendJob` prepares a send (build, checks, keys, lock, the list recorded by `recipients`) and runs
`loop.SendLoop`: claim a batch, request, record, retry, with `sending.concurrency` requests in flight.
`batches` makes the per-recipient values and request bodies (`bodies` builds them ahead in a helper
process), `transport` is the one-method interface to SendGrid and the outbox, `plan` the plain values a
send reports, `status` what `newsletter status` shows. `schedule` holds the SendGrid batch id a send
carries and cancels, pauses and resumes scheduled mail; `brake` stops a running send when the webhook's
events show bounces or complaints. All state goes through `pipeline.store`.
"""
