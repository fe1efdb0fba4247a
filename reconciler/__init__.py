"""zlayer: a GitOps reconciler for container hosts driven by ZLayer deployment specs."""

__version__ = "0.1.0.dev0"
