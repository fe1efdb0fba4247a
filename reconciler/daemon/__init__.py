"""The host daemon: sources, the reconcile loop, supervision, cron and jobs, the API."""
